"""Attribute inference for tabular models (Fredrikson et al., 2014, "Privacy in Pharmacogenetics: An End-to-End
Case Study of Personalized Warfarin Dosing", USENIX Security; advantage as in Yeom et al., 2018, CSF).

The adversary knows a record's other features and its label, and the marginal distribution of the sensitive
attribute. For every candidate value v it queries the model and guesses argmax_v p(y | x with v) * prior(v).
Continuous attributes are cut into quantile bins (a guess is right when it lands in the true bin). Leakage is the
accuracy on training records compared with non-members (the advantage, with a 95% normal-approximation
interval; findings are graded on its lower end) and with the prior alone.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import torch

from bastion.attacks.base import Attack
from bastion.core.data import Dataset, validate_for_model
from bastion.core.errors import DataError, ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access, Target

from .base import check_int


def candidate_values(column: np.ndarray, n_values: int) -> tuple[np.ndarray, np.ndarray]:
    """(values to try, bin edges): the distinct values when there are few, else quantile-bin medians."""
    distinct = np.unique(column)
    if len(distinct) <= n_values:
        mids = (distinct[1:] + distinct[:-1]) / 2
        return distinct.astype(np.float32), mids
    edges = np.unique(np.quantile(column, np.linspace(0, 1, n_values + 1)[1:-1], method="inverted_cdf"))
    edges = edges[edges > column.min()]  # edges are data values, so no bin is empty
    bins = np.digitize(column, edges)
    values = np.array([np.median(column[bins == b]) for b in range(len(edges) + 1)], dtype=np.float32)
    return values, edges


@register("attacks", "attribute", family="privacy")
class AttributeInference(Attack):
    """Attribute inference (Fredrikson et al. 2014): recover a sensitive feature from the model's scores.

    Example:
        >>> from bastion.attacks.privacy.attribute import AttributeInference
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> members = load_dataset("members.npz")
        >>> nonmembers = load_dataset("nonmembers.npz")
        >>> population = load_dataset("population.npz")
        >>> attack = AttributeInference(attribute=0)
        >>> result = attack.run(target, data, members=members, nonmembers=nonmembers, population=population)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    family: ClassVar[str] = "privacy"
    name: ClassVar[str] = "attribute"
    requires: ClassVar[Access] = Access.SCORES
    dataset_params: ClassVar[tuple[str, ...]] = ("members", "nonmembers", "population")

    def __init__(self, attribute: int = 0, *, n_values: int = 10, seed: int = 0):
        self.attribute = check_int(attribute, "attribute", 0)
        self.n_values = check_int(n_values, "n_values", 2)
        self.seed = int(seed)

    def guess(self, target: Target, data: Dataset, values: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """The MAP guess (index into `values`) for each record of `data`."""
        n, v = len(data), len(values)
        x = torch.as_tensor(data.x, device=target.device)
        trials = x[:, None, :].repeat(1, v, 1)
        trials[:, :, self.attribute] = torch.as_tensor(values, device=target.device)
        y = torch.as_tensor(data.y, device=target.device).repeat_interleave(v)
        with torch.no_grad():
            p = target.probabilities(trials.reshape(n * v, -1)).gather(1, y[:, None]).view(n, v)
        posterior = p.double() * torch.as_tensor(prior, device=target.device)
        return posterior.argmax(1).cpu().numpy()

    def run(self, target: Target, data: Dataset | None = None, members: Dataset | None = None,
            nonmembers: Dataset | None = None, population: Dataset | None = None, **_: Any) -> Result:
        self.check_access(target)
        if members is None or nonmembers is None:
            raise DataError("attribute inference needs --members and --nonmembers datasets")
        if len(target.input_shape) != 1:
            raise DataError("attribute inference works on tabular models (inputs of shape (n, features))")
        if self.attribute >= target.input_shape[0]:
            raise ParameterError(f"attribute {self.attribute} is out of range for {target.input_shape[0]} features")
        population = population if population is not None else data
        for d in (members, nonmembers, population):
            if d is not None:
                validate_for_model(d, target.n_classes, target.input_shape)
        start, queries_before = time.perf_counter(), target.queries
        known = population if population is not None else Dataset(np.concatenate([members.x, nonmembers.x]),
                                                                   np.concatenate([members.y, nonmembers.y]))
        values, edges = candidate_values(known.x[:, self.attribute], self.n_values)
        prior = np.bincount(np.digitize(known.x[:, self.attribute], edges), minlength=len(values)) + 1.0
        prior /= prior.sum()
        acc = {}
        for label, d in (("members", members), ("nonmembers", nonmembers)):
            truth = np.digitize(d.x[:, self.attribute], edges)
            acc[label] = float((self.guess(target, d, values, prior) == truth).mean())
        baseline = float((np.digitize(members.x[:, self.attribute], edges) == prior.argmax()).mean())
        advantage = acc["members"] - acc["nonmembers"]
        se = np.sqrt(acc["members"] * (1 - acc["members"]) / len(members)
                     + acc["nonmembers"] * (1 - acc["nonmembers"]) / len(nonmembers))
        metrics = {
            "attribute": self.attribute,
            "n_values": len(values),
            "accuracy_members": acc["members"],
            "accuracy_nonmembers": acc["nonmembers"],
            "baseline_accuracy": baseline,
            "advantage": advantage,
            "advantage_ci": [float(advantage - 1.96 * se), float(advantage + 1.96 * se)],
            "gain_over_prior": acc["members"] - baseline,
        }
        return Result(family=self.family, attack=self.name, params=self.get_params(), metrics=metrics,
                            queries=target.queries - queries_before, seconds=time.perf_counter() - start,
                            device=str(target.device))
