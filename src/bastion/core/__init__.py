"""Core contracts: Target, Dataset, Trainer, results, registry and errors."""
