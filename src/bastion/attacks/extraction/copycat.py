"""Copycat CNN (Correia-Silva, Berriel, Badue, de Souza & Oliveira-Santos, "Copycat CNN: Stealing Knowledge by
Persuading Confession with Random Non-Labeled Data", IJCNN 2018).

The plain copycat: draw inputs at random from the attacker's pool (problem-domain or not), label them with the
API's top-1 answers, and train a copy on those labels with cross-entropy. By default it uses labels even when the
API returns scores (`soft=true` or `auto` trains on the scores instead).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from torch import nn

from bastion.attacks.extraction.learning import LearningExtraction
from bastion.core.data import Dataset
from bastion.core.registry import register
from bastion.core.target import Target


@register("attacks", "copycat", family="extraction")
class Copycat(LearningExtraction):
    """Copycat CNN: random pool inputs, the API's labels, a copy trained with cross-entropy."""

    name = "copycat"
    default_soft: ClassVar[bool | str] = False

    def extract(self, api: Target, pool: Dataset | None, budgets: list[int]) -> Iterator[tuple[int, nn.Module]]:
        assert pool is not None  # run() refuses a missing pool
        yield from self.sample_and_train(api, pool, budgets)
