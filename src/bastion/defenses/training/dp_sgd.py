"""DP-SGD through Opacus, trained by the shared `Trainer` (Abadi et al., "Deep Learning with Differential
Privacy", CCS 2016).

Each step samples a batch by Poisson sampling (every record independently with rate q, as the privacy analysis
assumes), clips every per-sample gradient to L2 norm `max_grad_norm`, adds Gaussian noise of standard deviation
`noise_multiplier`·`max_grad_norm` to their sum and takes an optimiser step. Opacus computes the per-sample
gradients (`GradSampleModule`), clips and noises them (`DPOptimizer`) and its accountant (RDP by default, Mironov
2017) turns (noise multiplier, q, steps) into the (ε, δ) that is reported. With `target_epsilon`, the noise
multiplier is the smallest that keeps ε within the target after all epochs.

Layers that mix samples (BatchNorm) cannot be trained with per-sample privacy: they are replaced by GroupNorm
(Opacus' `ModuleValidator.fix`), and the report says so. The report adds the change in membership inference (the
LOSS attack of the privacy family on the training records against held-out data) before and after.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bastion.core import registry
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import TorchTarget
from bastion.defenses.training.base import TrainingDefense
from bastion.evaluation.privacy_verdicts import membership_severity

ACCOUNTANTS = ("rdp", "prv", "gdp")


def require_eager(model: nn.Module) -> None:
    """Opacus computes per-sample gradients with module hooks, which TorchScript and exported graphs lack."""
    graphs = (torch.jit.ScriptModule, torch.fx.GraphModule)
    if any(isinstance(m, graphs) for m in model.modules()):
        raise ParameterError("DP-SGD needs an eager PyTorch model to compute per-sample gradients: load its weights "
                             "as .safetensors with --arch module:factory instead of TorchScript or torch.export")


def private_layers(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """`model` with the layers Opacus cannot train replaced (BatchNorm -> GroupNorm), and what was replaced."""
    from opacus.validators import ModuleValidator

    require_eager(model)
    replaced = [f"{name or 'model'} ({type(m).__name__})" for name, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if replaced:
        model = ModuleValidator.fix(model)
    errors = ModuleValidator.validate(model.train(), strict=False)
    if errors:
        raise ParameterError(f"DP-SGD cannot train this model: {str(errors[0]).splitlines()[0]}")
    return model, replaced


def _sum_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy that is 0 (not NaN) on the empty batches Poisson sampling can draw."""
    return F.cross_entropy(logits, y, reduction="sum") / max(1, len(y))


@register("defenses", "dp-sgd", family="training")
class DPSGD(TrainingDefense):
    """Differentially private training with DP-SGD (Abadi et al., CCS 2016) through Opacus.

    `noise_multiplier` σ or `target_epsilon` (then σ is found by the accountant) and `delta` δ; `max_grad_norm` is
    the clipping norm C; the expected batch size is `batch_size` (Poisson rate q = 1/⌈n/batch_size⌉). Trains from
    scratch by default (`from_scratch`): fine-tuning a model already trained on the same records protects nothing
    it memorised before. Reports ε, δ, σ, q and steps, the clean accuracy cost, the robust accuracy change at
    `eval_eps` (none to skip) and the membership-inference change (`mia_attack`, the privacy family's `loss`).

    Example:
        >>> from bastion.defenses.training.dp_sgd import DPSGD
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> train_data = load_dataset("train.npz")
        >>> result = DPSGD().run(target, data, train_data=train_data)
        >>> result.findings
    """

    name = "dp-sgd"

    def __init__(self, noise_multiplier: float | None = None, *, target_epsilon: float | None = None,
                 delta: float = 1e-5, max_grad_norm: float = 1.0, epochs: int = 10, batch_size: int = 64,
                 lr: float = 1e-3, optimizer: str = "adam", from_scratch: bool = True, accountant: str = "rdp",
                 mia_attack: str = "loss", eval_eps: float | str | Sequence[float] | None = 8 / 255,
                 norm: str = "linf", attack: str = "auto", seed: int = 0):
        if noise_multiplier is not None and target_epsilon is not None:
            raise ParameterError("give either noise_multiplier or target_epsilon, not both")
        if noise_multiplier is None and target_epsilon is None:
            noise_multiplier = 1.0
        if noise_multiplier is not None and noise_multiplier <= 0:
            raise ParameterError("noise_multiplier must be positive")
        if target_epsilon is not None and target_epsilon <= 0:
            raise ParameterError("target_epsilon must be positive")
        if not 0 < delta < 1 or max_grad_norm <= 0:
            raise ParameterError("delta must lie in (0, 1) and max_grad_norm be positive")
        if accountant not in ACCOUNTANTS:
            raise ParameterError(f"unknown accountant {accountant!r}: use {', '.join(ACCOUNTANTS)}")
        self.noise_multiplier = None if noise_multiplier is None else float(noise_multiplier)
        self.target_epsilon = None if target_epsilon is None else float(target_epsilon)
        self.delta, self.max_grad_norm, self.accountant = float(delta), float(max_grad_norm), accountant
        self.mia_attack = str(mia_attack)
        self._training(epochs, batch_size, lr, optimizer, from_scratch, eval_eps, norm, attack, seed)

    def check_model(self, model: nn.Module) -> None:
        require_eager(model)

    def train(self, model: nn.Module, data: Dataset, target: TorchTarget) -> tuple[nn.Module, dict[str, Any]]:
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer

        model, replaced = private_layers(model)
        device = target.device
        n = len(data)
        steps_per_epoch = math.ceil(n / self.batch_size)
        rate = 1.0 / steps_per_epoch
        steps = self.epochs * steps_per_epoch
        sigma = self.noise_multiplier
        if sigma is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Opacus' note on the range of RDP orders
                sigma = get_noise_multiplier(target_epsilon=self.target_epsilon, target_delta=self.delta,
                                             sample_rate=rate, steps=max(1, steps), accountant=self.accountant)
        x = torch.as_tensor(data.x, dtype=torch.float32, device=device)
        y = torch.as_tensor(data.y, dtype=torch.long, device=device)
        gen = torch.Generator(device=device).manual_seed(self.seed)

        def poisson_batch(_: nn.Module, xb: torch.Tensor, yb: torch.Tensor, epoch: int):
            chosen = torch.rand(n, generator=gen, device=device) < rate
            return x[chosen], y[chosen]

        module = GradSampleModule(model.to(device))
        trainer = self.trainer(target, loss_fn=_sum_loss, batch_hook=poisson_batch, batch_size=self.batch_size)
        optimizer = DPOptimizer(trainer.make_optimizer(module), noise_multiplier=sigma,
                                max_grad_norm=self.max_grad_norm, expected_batch_size=max(1, round(rate * n)))
        accountant = create_accountant(self.accountant)
        optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=rate))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus' notes on backward hooks and RDP orders
            trainer.fit(module, x, y, optimizer)
            epsilon = float(accountant.get_epsilon(self.delta)) if steps else 0.0
        module.remove_hooks()
        model = module._module.eval()
        metrics: dict[str, Any] = {
            "epsilon": epsilon, "delta": self.delta, "noise_multiplier": float(sigma), "sample_rate": rate,
            "steps": steps, "max_grad_norm": self.max_grad_norm, "accountant": self.accountant,
            "train_loss": trainer.history.loss, "train_accuracy": trainer.history.accuracy,
            "layers_replaced": replaced, "n_train": n,
        }
        return model, metrics

    def extra_report(self, before: TorchTarget, after: TorchTarget, data: Dataset,
                     train_data: Dataset) -> dict[str, Any]:
        """Membership inference on the training records (members) against `data` (non-members), before and
        after."""
        k = min(len(train_data), len(data))
        order = np.random.default_rng(self.seed).permutation(len(train_data))[:k]
        members, nonmembers = train_data.subset(order, name="members"), data.head(k)
        attack = registry.get("attacks", self.mia_attack, "privacy")(seed=self.seed)
        rows = {}
        for when, target in (("before", before), ("after", after)):
            result = attack.run(target, None, members=members, nonmembers=nonmembers)
            tpr = {round(r["fpr"], 6): r for r in result.metrics["tpr_at_fpr"]}
            rows[when] = {"auc": result.metrics["auc"], "auc_ci": result.metrics["auc_ci"],
                          "tpr_at_1pct_fpr": tpr[0.01]["tpr"] if 0.01 in tpr else None,
                          "tpr_at_1pct_fpr_ci": tpr[0.01]["ci"] if 0.01 in tpr else None,
                          "severity": membership_severity(result.metrics)}
        change = None
        if rows["before"]["tpr_at_1pct_fpr"] is not None:
            change = rows["after"]["tpr_at_1pct_fpr"] - rows["before"]["tpr_at_1pct_fpr"]
        membership = {"attack": self.mia_attack, "n_members": k, "n_nonmembers": k, **rows,
                      "tpr_at_1pct_fpr_change": change, "auc_change": rows["after"]["auc"] - rows["before"]["auc"]}
        return {"membership": membership}
