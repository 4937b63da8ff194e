"""EOT and BPDA: adapting gradient attacks to randomised models and non-differentiable layers.

- EOT, Expectation over Transformation (Athalye, Engstrom, Ilyas & Kwok, ICML 2018; Athalye, Carlini & Wagner,
  ICML 2018 §4.3): a randomised model is replaced by the average of `samples` forward passes (mean
  log-probabilities), so gradients are those of the expected loss and decisions are majority-like.
- BPDA, Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner, ICML 2018 §4.1): a layer whose
  gradient is zero or missing (quantisation, thresholds, saturated softmax, a `detach`) keeps its exact forward
  pass but back-propagates as the identity. `masking_modules` finds such layers by measuring each same-shape
  module's vector-Jacobian product on real inputs.
"""

from __future__ import annotations

import inspect
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.evasion.base import EvasionAttack
from bastion.core.data import Dataset
from bastion.core.errors import AccessError, ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access, Target, TargetView, TorchTarget


class EOTTarget(TargetView):
    """A view of a randomised target whose outputs are mean log-probabilities over `samples` forward passes."""

    def __init__(self, base: Target, samples: int = 10):
        if samples < 1:
            raise ParameterError("EOT needs at least 1 sample")
        super().__init__(base, name=f"{base.name} (EOT x{samples})", output_kind="logits",
                         batch_size=max(1, base.batch_size // samples))
        self.samples = int(samples)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counter.charge((self.samples - 1) * len(x))
        out = self.base._forward(x.repeat(self.samples, *[1] * (x.dim() - 1)))
        kind = self.base.output_kind
        if kind == "labels":
            votes = F.one_hot(out.long(), self.n_classes).float().view(self.samples, len(x), -1).mean(0)
            return votes.clamp_min(1e-6).log()
        logp = out.log_softmax(-1) if kind == "logits" else out.clamp_min(1e-12).log()
        return logp.view(self.samples, len(x), -1).mean(0)


class BPDATarget(TargetView):
    """A view of a PyTorch target in which the named modules back-propagate as the identity."""

    def __init__(self, base: TorchTarget, modules: Sequence[str]):
        if not isinstance(base, TorchTarget):
            raise AccessError("BPDA needs a PyTorch model (white-box access to its layers)")
        named = dict(base.model.named_modules())
        missing = [m for m in modules if m not in named]
        if missing:
            raise ParameterError(f"the model has no module {', '.join(missing)}; it has: "
                                 f"{', '.join(n for n in named if n) or 'none'}")
        super().__init__(base, name=f"{base.name} (BPDA)")
        self.modules = list(modules)
        self._named = named

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return self.base._forward(x)
        handles = [self._named[m].register_forward_hook(_straight_through) for m in self.modules]
        try:
            return self.base._forward(x)
        finally:
            for h in handles:
                h.remove()


def _straight_through(module: nn.Module, inputs: tuple, output: Any) -> Any:
    inp = inputs[0] if inputs else None
    if not (isinstance(inp, torch.Tensor) and isinstance(output, torch.Tensor) and inp.shape == output.shape):
        raise ParameterError(f"BPDA with the identity needs a layer whose output has its input's shape "
                             f"({type(module).__name__} does not)")
    return inp + (output - inp).detach()


def masking_modules(target: Target, x: torch.Tensor, tol: float = 1e-6, share: float = 0.5) -> list[str]:
    """Names of same-shape modules whose vector-Jacobian product vanishes (≤ tol relative) on at least `share`
    of the samples, or that cut the graph; the innermost ones when modules nest. Empty for non-PyTorch targets."""
    if not isinstance(target, TorchTarget) or target.access < Access.GRADIENTS:
        return []
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for name, module in target.model.named_modules():
        if not name:
            continue

        def hook(mod: nn.Module, inputs: tuple, output: Any, name: str = name) -> None:
            inp = inputs[0] if inputs else None
            if isinstance(inp, torch.Tensor) and isinstance(output, torch.Tensor) and inp.shape == output.shape \
                    and inp.requires_grad:
                captured[name] = (inp, output)

        try:
            hooks.append(module.register_forward_hook(hook))
        except RuntimeError:  # TorchScript modules take no hooks: nothing to find there
            continue
    try:
        with torch.enable_grad():
            target.model(x.detach().clone().requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    gen = torch.Generator().manual_seed(0)
    found = []
    for name, (inp, out) in captured.items():
        if not out.requires_grad:
            found.append(name)
            continue
        v = torch.randn(out.shape, generator=gen).to(out.device)
        (g,) = torch.autograd.grad(out, inp, v, retain_graph=True, allow_unused=True)
        if g is None:
            found.append(name)
            continue
        ratio = g.flatten(1).norm(dim=1) / v.flatten(1).norm(dim=1).clamp_min(1e-12)
        if float((ratio <= tol).float().mean()) >= share:
            found.append(name)
    return [n for n in found if not any(o != n and o.startswith(n + ".") for o in found)]


def build_attack(name: str, eps: Any, norm: str, seed: int, **params: Any):
    """A registered evasion attack, given only the parameters its constructor accepts (None values dropped)."""
    from bastion.core import registry

    cls = registry.get("attacks", name, "evasion")
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in {"eps": eps, "norm": norm, "seed": seed, **params}.items()
              if v is not None and k in accepted}
    return cls(**kwargs)


class _Wrapped(EvasionAttack):
    """An evasion attack (`attack`, a registered name) run against a view of the target."""

    requires = Access.LABELS  # the wrapped attack checks its own needs against the view

    def _configure(self, attack: str, steps: int | None, restarts: int | None) -> None:
        self.attack, self.steps, self.restarts = attack, steps, restarts
        self._inner = build_attack(attack, self.eps, self.norm, self.seed, steps=steps, restarts=restarts)

    @abstractmethod
    def view(self, target: Target, data: Dataset) -> tuple[Target, dict[str, Any]]:
        ...

    def perturb(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        """The wrapped attack's examples, crafted against the view (EOT average or BPDA surrogate)."""
        view, _ = self.view(target, Dataset(x.detach().cpu().numpy(), y.detach().cpu().numpy()))
        return self._inner.perturb(view, x, y, eps)

    def run(self, target: Target, data: Dataset, **_: Any) -> Result:
        view, extra = self.view(target, data)
        result = self._inner.run(view, data)
        result.attack, result.params = self.name, self.get_params()
        result.metrics.update(extra)
        result.metrics["inner_attack"] = self._inner.name  # judged as "name (inner)" by the evasion family
        return result


@register("attacks", "eot", family="evasion",
          summary="EOT: an attack against the average of a randomised model (Athalye 2018)")
class EOT(_Wrapped):
    """Expectation over Transformation (Athalye et al., ICML 2018): run `attack` against the average of
    `samples` forward passes of a randomised model; robust accuracy is judged on that average.

    Example:
        >>> from bastion.attacks.evasion.wrappers import EOT
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = EOT(attack='apgd-ce').run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "eot"

    def __init__(self, attack: str = "apgd-ce", *, samples: int = 10, eps: float | str | Sequence[float] = 8 / 255,
                 norm: str = "linf", steps: int | None = None, restarts: int | None = None, seed: int = 0):
        super().__init__(eps, norm=norm, seed=seed)
        if samples < 1:
            raise ParameterError("EOT needs at least 1 sample")
        self.samples = int(samples)
        self._configure(attack, steps, restarts)

    def view(self, target: Target, data: Dataset) -> tuple[Target, dict[str, Any]]:
        return EOTTarget(target, self.samples), {"eot_samples": self.samples}


@register("attacks", "bpda", family="evasion",
          summary="BPDA: an attack through non-differentiable layers (Athalye 2018)")
class BPDA(_Wrapped):
    """Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner, ICML 2018): run `attack` with the
    named layers (`modules`, comma-separated; found automatically when omitted) back-propagating as the
    identity. Needs a PyTorch model.

    Example:
        >>> from bastion.attacks.evasion.wrappers import BPDA
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = BPDA(attack='apgd-ce').run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "bpda"
    requires = Access.GRADIENTS

    def __init__(self, attack: str = "apgd-ce", *, modules: str | Sequence[str] | None = None,
                 eps: float | str | Sequence[float] = 8 / 255, norm: str = "linf", steps: int | None = None,
                 restarts: int | None = None, seed: int = 0):
        super().__init__(eps, norm=norm, seed=seed)
        if isinstance(modules, str):
            modules = [m.strip() for m in modules.split(",") if m.strip()]
        self.modules = None if modules is None else list(modules)
        self._configure(attack, steps, restarts)

    def view(self, target: Target, data: Dataset) -> tuple[Target, dict[str, Any]]:
        self.check_access(target)
        if not isinstance(target, TorchTarget):
            raise AccessError("BPDA needs a PyTorch model (white-box access to its layers)")
        modules = self.modules
        if modules is None:
            x = torch.as_tensor(data.x[:256], dtype=torch.float32, device=target.device)
            modules = masking_modules(target, x)
        view = BPDATarget(target, modules) if modules else target
        return view, {"bpda_modules": list(modules)}
