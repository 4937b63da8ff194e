"""Fine-tuning on clean data: the simplest backdoor repair, and the baseline Fine-Pruning improves on."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bastion.core.registry import register
from bastion.defenses.repair.base import RepairDefense


@register("defenses", "fine-tune", family="repair",
          summary="remove a backdoor by fine-tuning on clean data")
class FineTune(RepairDefense):
    """Fine-tuning on trusted clean data (the baseline of Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending
    Against Backdooring Attacks on Deep Neural Networks", RAID 2018).

    A copy of the model is trained `epochs` more epochs on the clean `data` (minus the held-out part) through the
    shared `Trainer`. It forgets the backdoor only when the clean updates reach the neurons the trigger uses; the
    result reports CA and ASR before and after, and DER.

    Example:
        >>> from bastion.defenses.repair.fine_tune import FineTune
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> triggered = load_dataset("triggered.npz")
        >>> test_data = load_dataset("test.npz")
        >>> train_data = load_dataset("train.npz")
        >>> defense = FineTune(epochs=20)
        >>> result = defense.run(target, data, triggered=triggered, test_data=test_data, train_data=train_data)
        >>> result.findings
    """

    name = "fine-tune"

    def repair(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        self.trainer(x.device).fit(model, x, y)
        return {"fine_tune_epochs": self.epochs}
