"""Output hardening as defenses: `round`, `top-k`, `label-only` and `reverse-sigmoid`.

The transforms themselves are the postprocess package's Target wrappers (`defenses.postprocess`: Tramèr et al.,
USENIX Security 2016; Lee, Edraki & Qi, IEEE S&P Workshops 2019); this module turns each into a defense that
yields the defended Target (`defended_`), a defended model for export (`artifact_`: the model followed by the same
transform, returning log-probabilities) and the before/after comparison of `defenses.before_after`. Output hardening
aims at extraction and membership inference; against evasion it only hides gradients, which BPDA (the transform
back-propagating as the identity) shows.
"""

from __future__ import annotations

import time
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.evasion.base import parse_eps
from bastion.attacks.evasion.norms import check_norm
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access, Target, TorchTarget
from bastion.defenses.base import Defense, require_data
from bastion.defenses.before_after import clean_comparison, compare
from bastion.defenses.postprocess import LabelOnly, OutputDefense, ReverseSigmoid, Rounding, TopK
from bastion.defenses.preprocess.transforms import decided_by, exportable


class HardenedModel(nn.Module):
    """`model` followed by an output defense's transform: log of the hardened probabilities (labels one-hot).

    With `straight_through` (BPDA), it returns the model's log-probabilities ranked as the hardened output
    (`preprocess.transforms.decided_by`): the same decisions, the gradient of the model itself."""

    def __init__(self, model: nn.Module, defense: OutputDefense, n_classes: int):
        super().__init__()
        self.model, self.n_classes = model, int(n_classes)
        self.defense = defense  # a plain attribute: its transform is traced into the module's graph
        self.straight_through = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = self.model(x).float().log_softmax(-1)
        out = self.defense.transform(log_probs.exp(), x)
        if out.dim() == 1:
            out = F.one_hot(out.long(), self.n_classes).to(log_probs.dtype)
        hardened = out.to(log_probs.dtype).clamp_min(1e-12).log()
        return decided_by(log_probs, hardened) if self.straight_through else hardened


class OutputHardening(Defense, metaclass=ABCMeta):
    """Base: subclasses implement `wrap(target) -> OutputDefense`; evaluation parameters are shared."""

    family: ClassVar[str] = "postprocess"
    requires: ClassVar[Access] = Access.SCORES

    def _evaluation(self, eps: float | str | Sequence[float] | None, norm: str, attack: str, seed: int) -> None:
        self.eps = None if eps is None else parse_eps(eps)
        self.norm, self.attack, self.seed = check_norm(norm), str(attack), int(seed)

    @abstractmethod
    def wrap(self, target: Target) -> OutputDefense:
        """The defended API in front of `target`."""

    def run(self, target: Target, data: Dataset | None = None, **_: Any) -> Result:
        data = require_data(data, f"defense '{self.name}'")
        self.check_access(target)
        start, queries = time.perf_counter(), target.queries
        defended = self.wrap(target)
        self.defended_ = defended
        self.artifact_ = None
        after: Target = defended
        if isinstance(target, TorchTarget):
            model = HardenedModel(target.model, defended, target.n_classes).eval()
            self.artifact_ = exportable(model, target.model, target.input_shape)
            after = TorchTarget(model, target.input_shape, target.n_classes, target.bounds, target.device,
                                target.access, None, target.batch_size, defended.name)
        if self.eps is not None and target.access >= Access.GRADIENTS:
            metrics = compare(target, after, data, self.eps, self.norm, self.attack, seed=self.seed,
                              what=defended.name)
        else:
            metrics = clean_comparison(target, defended, data)
        with torch.no_grad():
            agree = (defended.labels(data.x) == target.labels(data.x)).float().mean()
        metrics["top1_agreement"] = float(agree)
        return self.result(target, metrics, start, queries)


@register("defenses", "round", family="postprocess")
class RoundOutput(OutputHardening):
    """Round every returned probability to `decimals` decimal places (Tramèr et al. 2016).

    Example:
        >>> from bastion.defenses.output_hardening import RoundOutput
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = RoundOutput(decimals=2).run(target, data)
        >>> result.findings
    """

    name = "round"

    def __init__(self, decimals: int = 2, *, eps: float | str | Sequence[float] | None = 8 / 255, norm: str = "linf",
                 attack: str = "auto", seed: int = 0):
        if int(decimals) < 0:
            raise ParameterError("rounding decimals must be >= 0")
        self.decimals = int(decimals)
        self._evaluation(eps, norm, attack, seed)

    def wrap(self, target: Target) -> OutputDefense:
        return Rounding(target, self.decimals)


@register("defenses", "top-k", family="postprocess")
class TopKOutput(OutputHardening):
    """Return only the `k` largest probabilities (Tramèr et al. 2016).

    Example:
        >>> from bastion.defenses.output_hardening import TopKOutput
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = TopKOutput(k=1).run(target, data)
        >>> result.findings
    """

    name = "top-k"

    def __init__(self, k: int = 1, *, eps: float | str | Sequence[float] | None = 8 / 255, norm: str = "linf",
                 attack: str = "auto", seed: int = 0):
        if int(k) < 1:
            raise ParameterError("top-k needs k >= 1")
        self.k = int(k)
        self._evaluation(eps, norm, attack, seed)

    def wrap(self, target: Target) -> OutputDefense:
        return TopK(target, self.k)


@register("defenses", "label-only", family="postprocess")
class LabelOnlyOutput(OutputHardening):
    """Return the predicted label only (Tramèr et al. 2016).

    Example:
        >>> from bastion.defenses.output_hardening import LabelOnlyOutput
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = LabelOnlyOutput(eps=0.0314).run(target, data)
        >>> result.findings
    """

    name = "label-only"

    def __init__(self, eps: float | str | Sequence[float] | None = 8 / 255, *, norm: str = "linf",
                 attack: str = "auto", seed: int = 0):
        self._evaluation(eps, norm, attack, seed)

    def wrap(self, target: Target) -> OutputDefense:
        return LabelOnly(target)


@register("defenses", "reverse-sigmoid", family="postprocess")
class ReverseSigmoidOutput(OutputHardening):
    """Reverse-sigmoid perturbation of the scores (Lee, Edraki & Qi, IEEE S&P Workshops 2019).

    Example:
        >>> from bastion.defenses.output_hardening import ReverseSigmoidOutput
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = ReverseSigmoidOutput(beta=1.0).run(target, data)
        >>> result.findings
    """

    name = "reverse-sigmoid"

    def __init__(self, beta: float = 1.0, *, gamma: float = 0.1, eps: float | str | Sequence[float] | None = 8 / 255,
                 norm: str = "linf", attack: str = "auto", seed: int = 0):
        if beta <= 0 or gamma <= 0:
            raise ParameterError("reverse sigmoid needs beta > 0 and gamma > 0")
        self.beta, self.gamma = float(beta), float(gamma)
        self._evaluation(eps, norm, attack, seed)

    def wrap(self, target: Target) -> OutputDefense:
        return ReverseSigmoid(target, self.beta, self.gamma)
