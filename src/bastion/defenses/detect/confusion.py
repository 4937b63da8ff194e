"""Confusion Training: a model that can learn only the backdoor shortcut points at the poison that carries it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bastion.attacks.backdoor.base import reset_copy
from bastion.core.data import Dataset, validate_for_model
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access, Target
from bastion.core.training import Trainer, seed_everything
from bastion.defenses.base import require_data, torch_module
from bastion.defenses.detect.screening import TrainingDataScreen


def class_excess(consistent: np.ndarray, labels: np.ndarray, significance: float) -> tuple[np.ndarray, list[dict]]:
    """Classes with more label-consistent samples than the clean rate predicts, by a one-sided binomial test.

    The clean rate is the median over classes of the consistent fraction (most classes are clean); a class is
    flagged when P(Binomial(n_c, rate) ≥ k_c) is below `significance` / K (Bonferroni over the K classes)."""
    from scipy.stats import binom

    classes = np.unique(labels)
    fractions = np.array([consistent[labels == c].mean() for c in classes])
    rate = float(np.clip(np.median(fractions), 1e-3, 0.999))
    poisoned, info = np.zeros(len(labels), bool), []
    for c, fraction in zip(classes, fractions, strict=True):
        n = int((labels == c).sum())
        k = int(consistent[labels == c].sum())
        p_value = float(binom.sf(k - 1, n, rate))
        bad = p_value < significance / len(classes)
        poisoned |= bad & (labels == c)
        info.append({"class": int(c), "n": n, "consistent_fraction": float(fraction), "p_value": p_value,
                     "poisoned": bool(bad)})
    return poisoned, info


@register("defenses", "confusion-training", family="detect",
          summary="find poisoned training samples by confusion training on a clean set (Qi 2023)")
class ConfusionTraining(TrainingDataScreen):
    """Confusion Training (Qi, Xie, Wang & Mittal, "Towards A Proactive ML Approach for Detecting Backdoor Poison
    Samples", USENIX Security 2023).

    A fresh copy of the model's architecture is first trained on the (possibly poisoned) training set for
    `pretrain_epochs`. Then, for `rounds` rounds, training continues with confusion batches: every batch of the
    training set is paired with a batch of the defender's small clean set (`--data`) whose labels are redrawn at
    random, weighted by `confusion_factor` (the paper's λ). The random labels keep erasing what the model learns
    from natural features, which clean samples need; a backdoor trigger, absent from the clean set, is a shortcut
    the confusion does not touch, so poisoned samples stay fitted. Each round trains on the samples the previous
    round still predicted correctly (the distilled set). At the end a sample is a candidate when the confusion
    model gives its label a probability above `confidence` (0.5: more likely than all other labels together;
    confusion keeps clean inputs near chance). Thresholds come from the statistics: a class is poisoned when it
    holds more candidates than the clean rate (median over classes) allows under a binomial test at
    `significance` (Bonferroni over classes), and only its candidates are flagged. A sample's score is the
    confusion model's log-probability of its own label. The pretraining should match the victim's training
    (`pretrain_epochs`) so that the backdoor is learnt before the confusion starts.

    Example:
        >>> from bastion.defenses.detect.confusion import ConfusionTraining
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> train_data = load_dataset("train.npz")
        >>> result = ConfusionTraining(rounds=4).run(target, data, train_data=train_data)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "confusion-training"
    family = "detect"
    threat = "backdoor"
    requires = Access.GRADIENTS

    def __init__(self, rounds: int = 4, *, pretrain_epochs: int = 20, round_epochs: int = 2,
                 confusion_factor: float = 5.0, confidence: float = 0.5, lr: float = 1e-3, batch_size: int = 64,
                 significance: float = 0.01, ground_truth: str | np.ndarray | None = None, seed: int = 0):
        if min(rounds, pretrain_epochs, round_epochs, batch_size) < 1 or lr <= 0 or confusion_factor <= 0:
            raise ParameterError("rounds, epochs and batch_size must be at least 1; lr and confusion_factor positive")
        if not 0 < significance < 1 or not 0 < confidence < 1:
            raise ParameterError("significance and confidence must lie in (0, 1)")
        self.rounds, self.pretrain_epochs, self.round_epochs = int(rounds), int(pretrain_epochs), int(round_epochs)
        self.confusion_factor, self.lr, self.batch_size = float(confusion_factor), float(lr), int(batch_size)
        self.significance, self.confidence = float(significance), float(confidence)
        self.ground_truth, self.seed = ground_truth, int(seed)
        self.clean_: Dataset | None = None

    def run(self, target: Target, data: Dataset | None = None, train_data: Dataset | None = None,
            **_: Dataset) -> Result:
        """Screen `train_data` using `data` as the defender's small clean set."""
        self.clean_ = require_data(data, self.name, "--data CLEAN_DATA (a small trusted set)")
        validate_for_model(self.clean_, target.n_classes, target.input_shape)
        return super().run(target, train_data=require_data(train_data, self.name, "--train-data FILE"))

    def confuse(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, xc: torch.Tensor,
                n_classes: int, gen: torch.Generator) -> None:
        """`round_epochs` epochs over (x, y), each batch paired with a randomly relabelled clean batch."""
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        model.train()
        for _ in range(self.round_epochs):
            for batch in torch.randperm(len(x), generator=gen).to(x.device).split(self.batch_size):
                pick = torch.randint(len(xc), (self.batch_size,), generator=gen).to(x.device)
                noise = torch.randint(n_classes, (self.batch_size,), generator=gen).to(x.device)
                loss = F.cross_entropy(model(x[batch]), y[batch]) + \
                    self.confusion_factor * F.cross_entropy(model(xc[pick]), noise)
                opt.zero_grad(set_to_none=True)
                (loss / (1 + self.confusion_factor)).backward()
                opt.step()
        model.eval()

    def screen(self, target: Target, data: Dataset) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Flags, scores and per-class statistics for a training set."""
        device = target.device
        x = torch.as_tensor(data.x, dtype=torch.float32, device=device)
        y = torch.as_tensor(data.y, dtype=torch.long, device=device)
        xc = torch.as_tensor(self.clean_.x, dtype=torch.float32, device=device)
        seed_everything(self.seed)
        model = Trainer(epochs=self.pretrain_epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                        device=str(device)).fit(reset_copy(torch_module(target, self.name)), x, y)
        gen = torch.Generator().manual_seed(self.seed)
        keep = torch.ones(len(x), dtype=torch.bool, device=device)
        for _ in range(self.rounds):
            self.confuse(model, x[keep], y[keep], xc, target.n_classes, gen)
            with torch.no_grad():
                log_p = torch.cat([model(c).log_softmax(-1) for c in x.split(1024)])
            fitted = log_p.argmax(-1) == y
            keep = fitted if fitted.any() else keep
        scores = log_p.gather(1, y[:, None]).squeeze(1).cpu().numpy().astype(np.float64)
        consistent = scores > np.log(self.confidence)
        poisoned, classes = class_excess(consistent, data.y, self.significance)
        return consistent & poisoned, scores, classes

