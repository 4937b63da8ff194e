"""Target: everything an attack sees of a model.

A target declares the access it grants (gradients ⊃ scores ⊃ labels), its class count, input shape and input
bounds, and answers batched `logits`, `probabilities` and `labels` calls. Every sample sent to the model is counted;
an optional query budget raises `QueryBudgetExceeded` before the call that would overspend it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

import numpy as np
import torch
from torch import nn

from bastion.core.device import resolve_device
from bastion.core.errors import AccessError, DeadlineExceeded, ParameterError, QueryBudgetExceeded
from bastion.core.layout import apply_memory_format, auto_batch_size

OutputKind = Literal["logits", "probabilities", "labels"]


class Access(IntEnum):
    """What a target grants. Higher levels include the lower ones."""

    LABELS = 1
    SCORES = 2
    GRADIENTS = 3

    @classmethod
    def parse(cls, value: str | Access) -> Access:
        if isinstance(value, Access):
            return value
        try:
            return cls[str(value).upper()]
        except KeyError:
            raise ParameterError(f"unknown access {value!r}: use gradients, scores or labels") from None


@dataclass
class QueryCounter:
    """Counts samples sent to a model; shared between a target and its restricted views."""

    used: int = 0
    budget: int | None = None
    deadline: float | None = None  # time.time() after which no query is answered (DeadlineExceeded)
    seconds: float | None = None  # the deadline's length, for the message

    def charge(self, n: int) -> None:
        if self.budget is not None and self.used + n > self.budget:
            raise QueryBudgetExceeded(self.budget, self.used, n)
        if self.deadline is not None and time.time() > self.deadline:
            raise DeadlineExceeded(self.seconds)
        self.used += n

    def stop_at(self, deadline: float | None, seconds: float | None = None) -> None:
        """Refuse queries after `deadline` (a time.time() value; None: no deadline)."""
        self.deadline, self.seconds = deadline, seconds

    @property
    def limited(self) -> bool:
        """Whether a budget or a deadline may stop the run (attacks then work in batches they can keep)."""
        return self.budget is not None or self.deadline is not None

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.used


class Target(ABC):
    """Base class. Subclasses implement `_forward(x) -> Tensor` returning `output_kind` for a batch."""

    output_kind: OutputKind = "logits"

    def __init__(
        self,
        n_classes: int,
        input_shape: Sequence[int],
        bounds: tuple[float, float] = (0.0, 1.0),
        device: str | torch.device = "auto",
        access: Access | str = Access.SCORES,
        max_queries: int | None = None,
        batch_size: int = 512,
        name: str = "model",
    ):
        if n_classes < 2:
            raise ParameterError(f"a classifier needs at least 2 classes, got {n_classes}")
        lo, hi = float(bounds[0]), float(bounds[1])
        if not lo < hi:
            raise ParameterError(f"bounds must satisfy low < high, got {bounds}")
        if max_queries is not None and max_queries < 0:
            raise ParameterError("max_queries must be non-negative")
        self.n_classes = int(n_classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.bounds = (lo, hi)
        self.device = resolve_device(device)
        self.access = Access.parse(access)
        self.batch_size = int(batch_size)
        self.name = name
        self.counter = QueryCounter(budget=max_queries)

    # -- accounting -------------------------------------------------------------------------------------------
    @property
    def queries(self) -> int:
        """Samples sent to the model so far."""
        return self.counter.used

    def reset_queries(self) -> None:
        self.counter.used = 0

    def require(self, access: Access, what: str = "this attack") -> None:
        """Raise AccessError unless the target grants `access`."""
        if self.access < access:
            raise AccessError(
                f"{what} needs {access.name.lower()} access but {self.name} grants only "
                f"{self.access.name.lower()}"
            )

    # -- queries ----------------------------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.dtype != torch.float32:
            x = x.float()
        if tuple(x.shape[1:]) != self.input_shape:
            raise ParameterError(f"input shape {tuple(x.shape[1:])} does not match model input {self.input_shape}")
        return x.to(self.device)

    def _batched(self, x: torch.Tensor) -> torch.Tensor:
        self.counter.charge(len(x))
        if len(x) <= self.batch_size:
            return self._forward(x)
        return torch.cat([self._forward(chunk) for chunk in x.split(self.batch_size)])

    def logits(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Scores before softmax, shape (n, n_classes). Differentiable when the target grants gradients.

        A target that only returns probabilities answers with log-probabilities (logits up to a constant)."""
        self.require(Access.SCORES, "logits")
        out = self._batched(self._prepare(x))
        if self.output_kind == "probabilities":
            return out.clamp_min(1e-12).log()
        return out

    def probabilities(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class probabilities, shape (n, n_classes)."""
        self.require(Access.SCORES, "probabilities")
        out = self._batched(self._prepare(x))
        return out if self.output_kind == "probabilities" else out.softmax(dim=-1)

    def labels(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Predicted labels, shape (n,), int64."""
        with torch.no_grad():
            out = self._batched(self._prepare(x))
        if self.output_kind == "labels":
            return out.long()
        return out.argmax(dim=-1)

    def restrict(self, access: Access | str) -> Target:
        """A view of this target that grants at most `access`, sharing its query counter."""
        access = Access.parse(access)
        if access > self.access:
            raise AccessError(f"cannot widen {self.access.name.lower()} access to {access.name.lower()}")
        return RestrictedTarget(self, access)

    @abstractmethod
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's raw output (`output_kind`) for one batch already on the device."""

    def describe(self) -> dict:
        """Plain metadata for reports and JSON output."""
        return {
            "name": self.name,
            "n_classes": self.n_classes,
            "input_shape": list(self.input_shape),
            "bounds": list(self.bounds),
            "access": self.access.name.lower(),
            "device": str(self.device),
            "queries": self.queries,
        }


class TorchTarget(Target):
    """A PyTorch module: white-box (gradient) access. The module must output logits; it is put in eval mode and,
    with `memory_format="auto"` on CPU, converted in place to channels-last when that verifiably computes the same
    function; `batch_size=None` picks cache-sized chunks on CPU (see `bastion.core.layout`)."""

    def __init__(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        n_classes: int | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        device: str | torch.device = "auto",
        access: Access | str = Access.GRADIENTS,
        max_queries: int | None = None,
        batch_size: int | None = None,
        name: str = "torch model",
        memory_format: str = "auto",
    ):
        dev = resolve_device(device)
        self.model = model.to(dev).eval()
        self.memory_format = apply_memory_format(self.model, input_shape, dev, memory_format)
        if batch_size is None:
            batch_size = auto_batch_size(self.model, input_shape, dev)
        if n_classes is None:
            with torch.no_grad():
                n_classes = int(self.model(torch.zeros(1, *input_shape, device=dev)).shape[-1])
        super().__init__(n_classes, input_shape, bounds, dev, access, max_queries, batch_size, name)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad and self.access >= Access.GRADIENTS:
            return self.model(x)
        with torch.no_grad():
            return self.model(x)


class FunctionTarget(Target):
    """A black box answered by a function on NumPy arrays (ONNX, scikit-learn, HTTP endpoints).

    `fn(x: ndarray float32) -> ndarray` returns logits, probabilities or labels as declared by `output`;
    `estimator` keeps the fitted scikit-learn classifier behind it (reference models clone it).
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        n_classes: int,
        input_shape: Sequence[int],
        output: OutputKind = "probabilities",
        bounds: tuple[float, float] = (0.0, 1.0),
        device: str | torch.device = "cpu",
        max_queries: int | None = None,
        batch_size: int = 512,
        name: str = "black-box model",
        estimator: object = None,
    ):
        if output not in ("logits", "probabilities", "labels"):
            raise ParameterError(f"unknown output kind {output!r}")
        access = Access.LABELS if output == "labels" else Access.SCORES
        super().__init__(n_classes, input_shape, bounds, device, access, max_queries, batch_size, name)
        self.fn = fn
        self.output_kind = output
        self.estimator = estimator  # the fitted scikit-learn classifier behind `fn`, when there is one

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = np.asarray(self.fn(x.detach().cpu().numpy()))
        expected = (len(x),) if self.output_kind == "labels" else (len(x), self.n_classes)
        if out.shape != expected:
            raise ParameterError(f"{self.name} returned shape {out.shape}, expected {expected}")
        dtype = torch.int64 if self.output_kind == "labels" else torch.float32
        return torch.as_tensor(out, device=self.device, dtype=dtype)


class TargetView(Target):
    """A view of another target, answering through `base`: the same classes, input shape, bounds and device, at
    most the base's access, and the base's query counter (each sample is counted once) unless `counter` is given.

    Every view of a model derives from it: access restriction (`restrict`, label-only), output hardening, the
    extraction query log, EOT, BPDA and input transforms. A view is configured in its constructor only; nothing
    patches a target afterwards. The default `_forward` passes the base's raw output through (without a graph
    when the view grants less than gradients)."""

    def __init__(self, base: Target, *, access: Access | str | None = None, name: str | None = None,
                 output_kind: OutputKind | None = None, batch_size: int | None = None,
                 counter: QueryCounter | None = None):
        granted = base.access if access is None else Access.parse(access)
        if granted > base.access:
            raise AccessError(f"cannot widen {base.access.name.lower()} access to {granted.name.lower()}")
        super().__init__(base.n_classes, base.input_shape, base.bounds, base.device, granted, None,
                         base.batch_size if batch_size is None else batch_size, base.name if name is None else name)
        self.base = base
        self.counter = base.counter if counter is None else counter
        self.output_kind = base.output_kind if output_kind is None else output_kind

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.access < Access.GRADIENTS:
            with torch.no_grad():
                return self.base._forward(x.detach())
        return self.base._forward(x)


class RestrictedTarget(TargetView):
    """A narrower view of another target (e.g. the label-only API of a white-box model)."""

    def __init__(self, base: Target, access: Access):
        super().__init__(base, access=access, name=f"{base.name} ({Access.parse(access).name.lower()} only)")
