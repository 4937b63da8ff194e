"""Errors a user can act on. The CLI prints each as one line and exits with code 2."""


class BastionError(Exception):
    """Base class for every error caused by bad input or usage."""


class DataError(BastionError):
    """A dataset file is missing, malformed or does not fit the model."""


class ModelLoadError(BastionError):
    """A model file is missing, corrupt, unsafe or of an unknown format."""


class AccessError(BastionError):
    """An attack asked a target for more than the target grants (e.g. gradients of a label-only API)."""


class BudgetSpent(BastionError):
    """A query budget or a deadline stopped the run. Attacks catch it at a natural boundary (a batch of samples,
    a budget point) and return what they measured, marked partial (`Result.status`)."""


class QueryBudgetExceeded(BudgetSpent):
    """The target's query budget is spent."""

    def __init__(self, budget: int, used: int, requested: int):
        super().__init__(
            f"query budget spent: {used} of {budget} queries used, {requested} more requested"
        )
        self.budget, self.used, self.requested = budget, used, requested


class DeadlineExceeded(BudgetSpent):
    """The run's deadline passed (checked before each query to the target)."""

    def __init__(self, seconds: float | None = None):
        super().__init__("deadline reached" + (f" ({seconds:g} s)" if seconds is not None else ""))
        self.seconds = seconds


class ParameterError(BastionError):
    """An attack or defense parameter is out of its valid range."""
