"""Fine-Pruning: remove the neurons clean data leaves dormant (where backdoors hide), then fine-tune."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.training import accuracy
from bastion.defenses.repair.base import RepairDefense


def prunable_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The last convolution, or for a model without one the last hidden linear layer (the one before the head)."""
    named = [(n, m) for n, m in model.named_modules() if n]
    convs = [(n, m) for n, m in named if isinstance(m, nn.modules.conv._ConvNd)]
    if convs:
        return convs[-1]
    linears = [(n, m) for n, m in named if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise ParameterError("fine-prune needs a convolution or at least two linear layers to prune")
    return linears[-2]


@torch.no_grad()
def mean_activation(model: nn.Module, layer: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Post-ReLU activation of each output channel (unit) of `layer` summed over clean inputs and positions;
    ranks channels like the mean does, shape (channels,)."""
    total: list[torch.Tensor] = []
    hook = layer.register_forward_hook(
        lambda _m, _i, out: total.append(out.relu().transpose(0, 1).flatten(1).sum(1)))
    model.eval()
    try:
        for chunk in x.split(batch_size):
            model(chunk)
    finally:
        hook.remove()
    return torch.stack(total).sum(0)


@torch.no_grad()
def accuracy_with(model: nn.Module, layer: nn.Module, keep: torch.Tensor, x: torch.Tensor,
                  y: torch.Tensor) -> float:
    """Clean accuracy with the channels outside `keep` zeroed at the layer's output."""
    shape = (1, -1) + (1,) * (layer.weight.dim() - 2)
    hook = layer.register_forward_hook(lambda _m, _i, out: out * keep.view(shape).to(out.dtype))
    try:
        return accuracy(model, x, y)
    finally:
        hook.remove()


@register("defenses", "fine-prune", family="repair",
          summary="remove a backdoor: prune dormant channels, fine-tune on clean data (Liu 2018)")
class FinePrune(RepairDefense):
    """Fine-Pruning (Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep
    Neural Networks", RAID 2018).

    The output channels of the last convolution (the last hidden linear layer of an MLP) are pruned in increasing
    order of their mean activation on clean data, in steps of `prune_step` of the channels, as long as clean
    accuracy on the clean data stays within `max_accuracy_drop` of the original (capped at `max_prune`); pruned
    channels are masked for good (weights and bias), and the pruned model is fine-tuned on the clean data.

    Example:
        >>> from bastion.defenses.repair.fine_prune import FinePrune
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> triggered = load_dataset("triggered.npz")
        >>> test_data = load_dataset("test.npz")
        >>> train_data = load_dataset("train.npz")
        >>> defense = FinePrune(max_accuracy_drop=0.05)
        >>> result = defense.run(target, data, triggered=triggered, test_data=test_data, train_data=train_data)
        >>> result.findings
    """

    name = "fine-prune"

    def __init__(self, max_accuracy_drop: float = 0.05, *, prune_step: float = 0.05, max_prune: float = 0.95,
                 epochs: int = 20, lr: float = 1e-2, optimizer: str = "adam", batch_size: int = 64,
                 holdout: float = 0.3, seed: int = 0):
        super().__init__(epochs, lr=lr, optimizer=optimizer, batch_size=batch_size, holdout=holdout, seed=seed)
        if not 0 <= max_accuracy_drop < 1 or not 0 < prune_step <= 1 or not 0 < max_prune < 1:
            raise ParameterError("max_accuracy_drop must lie in [0, 1), prune_step in (0, 1], max_prune in (0, 1)")
        self.max_accuracy_drop, self.prune_step, self.max_prune = max_accuracy_drop, prune_step, max_prune

    def repair(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        name, layer = prunable_layer(model)
        order = mean_activation(model, layer, x).argsort()  # most dormant first
        channels = len(order)
        base = accuracy(model, x, y)
        step = max(1, int(round(self.prune_step * channels)))
        keep, pruned = torch.ones(channels, device=x.device), 0
        for k in range(step, int(self.max_prune * channels) + 1, step):
            trial = torch.ones(channels, device=x.device)
            trial[order[:k]] = 0
            if accuracy_with(model, layer, trial, x, y) < base - self.max_accuracy_drop:
                break
            keep, pruned = trial, k
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        prune.custom_from_mask(layer, "weight", keep.view(shape).expand_as(layer.weight))
        if layer.bias is not None:
            prune.custom_from_mask(layer, "bias", keep)
        pruned_accuracy = accuracy(model, x, y)
        if self.epochs:
            self.trainer(x.device).fit(model, x, y)
        prune.remove(layer, "weight")
        if layer.bias is not None:
            prune.remove(layer, "bias")
        return {"layer": name, "channels": channels, "pruned_channels": pruned, "prune_fraction": pruned / channels,
                "accuracy_after_pruning": pruned_accuracy}
