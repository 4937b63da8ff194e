"""Evasion attacks (THREATS.md §1): adversarial examples within an Lp ball."""
