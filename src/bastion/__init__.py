"""Bastion: find, measure and mitigate security threats to machine-learning models."""

from bastion.core.data import Dataset, load_dataset
from bastion.core.errors import BastionError
from bastion.core.results import AttackResult, Finding
from bastion.core.target import Access, Target, TorchTarget

__version__ = "0.1.0"

__all__ = [
    "Access",
    "AttackResult",
    "BastionError",
    "Dataset",
    "Finding",
    "Target",
    "TorchTarget",
    "load_dataset",
    "__version__",
]
