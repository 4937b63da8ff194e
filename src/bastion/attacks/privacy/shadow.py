"""Shadow-model attack (Shokri, Stronati, Song and Shmatikov, 2017, "Membership Inference Attacks Against Machine
Learning Models", IEEE S&P).

Shadow models are trained like the target on halves of a population pool, so their members are known. An attack
classifier learns to tell the shadows' outputs on their own training records from their outputs on held-out ones,
and is then applied to the target's outputs on the candidates. Shokri et al. train one attack model per class;
here one gradient-boosted classifier sees the true label among its features, which lets it split by class while
sharing statistics across classes with few records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.core.registry import register
from bastion.core.target import Target

from .base import MembershipData, logit_confidence
from .reference_attack import ReferenceAttack, reference_fit


def attack_features(log_probs: np.ndarray, y: np.ndarray, top_k: int = 10) -> np.ndarray:
    """Per-record features of a model's output: sorted top-k log-probs, log p_y, logit confidence,
    correctness and the one-hot label."""
    lp = torch.from_numpy(np.asarray(log_probs, np.float64)).log_softmax(-1)
    yt = torch.as_tensor(y)
    k = min(top_k, lp.shape[-1])
    top = lp.topk(k, dim=-1).values
    true = lp.gather(-1, yt[:, None])
    phi = logit_confidence(lp, yt)[:, None]
    correct = (lp.argmax(-1) == yt).double()[:, None]
    onehot = torch.nn.functional.one_hot(yt, lp.shape[-1]).double()
    return torch.cat([top, true, phi, correct, onehot], dim=1).numpy()


@register("attacks", "shadow", family="privacy")
class ShadowModelAttack(ReferenceAttack):
    """Shadow-model attack (Shokri et al. 2017): a classifier trained on shadow models' in/out outputs.

    Example:
        >>> from bastion.attacks.privacy.shadow import ShadowModelAttack
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> members = load_dataset("members.npz")
        >>> nonmembers = load_dataset("nonmembers.npz")
        >>> population = load_dataset("population.npz")
        >>> attack = ShadowModelAttack()
        >>> result = attack.run(target, data, members=members, nonmembers=nonmembers, population=population)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "shadow"

    def __init__(self, arch: str | Callable[[], nn.Module] | None = None, *, n_reference: int = 4, epochs: int = 20,
                 batch_size: int = 64, lr: float = 1e-3, optimizer: str = "adam", weight_decay: float = 0.0,
                 n_jobs: int | None = None, train_size: int | None = None, n_bootstrap: int = 200,
                 seed: int = 0):
        # shadow models never train on the candidates
        super().__init__(arch, n_reference=n_reference, mode="offline", epochs=epochs, batch_size=batch_size, lr=lr,
                         optimizer=optimizer, weight_decay=weight_decay, n_jobs=n_jobs, train_size=train_size,
                         n_bootstrap=n_bootstrap, seed=seed)

    def score(self, target: Target, data: MembershipData) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        from sklearn.ensemble import HistGradientBoostingClassifier

        refs = self.train_references(target, data)  # evaluated on the pool: their own in/out records
        n_models, n_pool = refs.masks.shape
        features = attack_features(refs.log_probs.reshape(n_models * n_pool, -1), np.tile(refs.pool_y, n_models))
        labels = refs.masks.reshape(-1).astype(int)
        classifier = HistGradientBoostingClassifier(max_iter=200, random_state=self.seed)
        classifier.fit(features, labels)
        answered = self.query_target(target, data.x, len(data.x), data.n_members).nan_to_num(0.0)  # NaN: not asked
        target_features = attack_features(answered.cpu().numpy(), data.y)
        scores = classifier.predict_proba(target_features)[:, 1]
        extra = {"n_reference": self.n_reference, "reference_train_size": refs.train_size,
                 "attack_train_accuracy": float(classifier.score(features, labels)),
                 **reference_fit(refs.log_probs, refs.pool_y, refs.masks)}
        return scores[: data.n_members], scores[data.n_members:], extra
