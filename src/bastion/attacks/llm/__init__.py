"""LLM family attacks: membership inference and memorisation (exposure, extraction) on causal LMs."""
