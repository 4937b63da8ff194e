"""Every registered attack and defense keeps the same contract (issue 15), like scikit-learn's `check_estimator`.

It builds from its defaults; `get_params()` covers the constructor and rebuilds an equal object; parameters after
the first are keyword-only; `name`, `family` and `requires` are declared on the class and match the registry; the
docstring cites a paper and has an Example; evasion results carry each sample's outcome; what `run`/`fit` leaves on
the object (fitted state) ends in `_`.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from bastion.attacks.evasion.base import EvasionAttack
from bastion.core import registry
from bastion.core.data import Dataset
from bastion.core.target import Access, TorchTarget

ENTRIES = [(kind, e) for kind in ("attacks", "defenses") for e in registry.entries(kind)]
IDS = [f"{kind}/{e['family']}/{e['name']}" for kind, e in ENTRIES]

# Classes that may fail only because another helper is still editing them (strict xfail: an entry must leave
# this list once its class passes). Empty: every registered class keeps the contract.
PENDING: dict[str, str] = {}
# An author (capitalised name) and, within the same citation, a year: "Madry et al., ICLR 2018", "(Croce & Hein,
# ICML 2020)".
CITATION = re.compile(r"[A-Z][\w'\-]+(?: et al\.|,| &| and|(?= (?:19[5-9]\d|20[0-4]\d)\b))[^>]{0,200}?"
                      r"\b(19[5-9]\d|20[0-4]\d)\b", re.S)


def own_parameters(cls: type) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def pending(kind: str, entry: dict) -> None:
    reason = PENDING.get(f"{kind}/{entry['family']}/{entry['name']}")
    if reason:
        pytest.xfail(reason)


@pytest.mark.parametrize(("kind", "entry"), ENTRIES, ids=IDS)
def test_builds_from_defaults_and_get_params_round_trips(kind, entry):
    cls = entry["cls"]
    obj = cls()
    params = obj.get_params()
    assert {p.name for p in own_parameters(cls)} <= set(params), "get_params() must cover the constructor"
    rebuilt = cls(**params)
    assert rebuilt.get_params() == params


@pytest.mark.parametrize(("kind", "entry"), ENTRIES, ids=IDS)
def test_parameters_after_the_first_are_keyword_only(kind, entry):
    pending(kind, entry)
    positional = [p.name for p in own_parameters(entry["cls"])[1:] if p.kind != p.KEYWORD_ONLY]
    assert not positional, f"make these keyword-only (add `*` after the first parameter): {positional}"


@pytest.mark.parametrize(("kind", "entry"), ENTRIES, ids=IDS)
def test_name_family_and_access_are_declared(kind, entry):
    cls = entry["cls"]
    assert cls.name == entry["name"]
    assert cls.family == entry["family"]
    assert isinstance(cls.requires, Access)


@pytest.mark.parametrize(("kind", "entry"), ENTRIES, ids=IDS)
def test_docstring_cites_a_paper_and_has_an_example(kind, entry):
    pending(kind, entry)
    doc = inspect.getdoc(entry["cls"]) or ""
    assert CITATION.search(doc), "the class docstring must cite its paper (authors and year)"
    example = re.search(r"^Example:?\n((?:\s+>>> .+\n?)+)", doc, re.M)
    assert example, "the class docstring must end with an `Example:` section of `>>>` lines"
    assert f"{entry['cls'].__name__}(" in example.group(1), "the example builds the class itself"


def assigned_outside_the_constructor(cls: type) -> dict[str, str]:
    """`self.NAME = ...` assignments in the methods of `cls` and its Bastion bases, other than the constructors
    and the helpers they call (transitively): {NAME: "Class.method"}."""
    methods: dict[str, tuple[str, ast.AST]] = {}
    for klass in reversed(cls.__mro__):  # a subclass's method overrides its base's
        if not klass.__module__.startswith(("bastion.", "tests.")):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        for f in tree.body[0].body:
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                methods[f.name if f.name != "__init__" else f"__init__.{klass.__name__}"] = (klass.__name__, f)
    construction, todo = set(), [name for name in methods if name.startswith("__init__.")]
    while todo:  # helpers the constructors call set parameters, not fitted state
        name = todo.pop()
        if name in construction or name not in methods:
            continue
        construction.add(name)
        todo += [n.func.attr for n in ast.walk(methods[name][1]) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
                 and n.func.value.id == "self"]
    found: dict[str, str] = {}
    for name, (owner, fn) in methods.items():
        if name in construction:
            continue
        for node in ast.walk(fn):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
            for target in targets:
                for el in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(el, ast.Attribute) and isinstance(el.value, ast.Name) and el.value.id == "self":
                        found.setdefault(el.attr, f"{owner}.{name}")
    return found


@pytest.mark.parametrize(("kind", "entry"), ENTRIES, ids=IDS)
def test_fitted_state_ends_in_an_underscore(kind, entry):
    """What `run` or `fit` sets on the object, other than its parameters, ends in `_` (scikit-learn's rule), so
    that fitted state is never mistaken for a parameter."""
    params = {p.name for p in own_parameters(entry["cls"])}
    bad = {name: where for name, where in assigned_outside_the_constructor(entry["cls"]).items()
           if not name.endswith("_") and not name.startswith("_") and name not in params}
    assert not bad, f"fitted attributes must end in `_`: {bad}"


class _Fits:
    def __init__(self, k: int = 1):
        self._setup(k)

    def _setup(self, k: int) -> None:
        self.k = k

    def run(self) -> None:
        self.k, self.centres = 2, [0.0]
        self.labels_ = [0]


def test_the_fitted_state_check_can_fail():
    assert assigned_outside_the_constructor(_Fits) == {"k": "_Fits.run", "centres": "_Fits.run",
                                                       "labels_": "_Fits.run"}


def test_the_citation_check_can_fail():
    assert CITATION.search("Projected gradient descent (Madry et al., ICLR 2018).")
    assert CITATION.search("the decision-boundary distance (Choquette-Choo 2021).")
    assert CITATION.search('(Wong, Rice & Kolter, "Fast is better than free", ICLR\n    2020)')
    assert not CITATION.search("A fast attack that works well on 2018 hardware.")


def test_every_evasion_attack_packages_its_result_through_the_shared_method():
    """Per-sample outcomes come from `EvasionAttack.result`; no evasion class may replace it."""
    evasion = [e["cls"] for e in registry.entries("attacks", "evasion")]
    assert evasion and all(issubclass(cls, EvasionAttack) for cls in evasion)
    assert all(cls.result is EvasionAttack.result for cls in evasion)


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_evasion_results_carry_per_sample_outcomes(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.rand(12, 4)
    y = model(x).argmax(1).numpy()
    y[:3] = (y[:3] + 1) % 3  # three samples the model gets wrong
    target = TorchTarget(model, input_shape=(4,), n_classes=3, bounds=(0.0, 1.0), device="cpu")
    data = Dataset(x.numpy().astype(np.float32), y.astype(np.int64), name="tiny")
    result = registry.get("attacks", name, "evasion")(eps=[0.01, 0.5]).run(target, data)
    samples = result.samples
    assert samples["eps"] == [0.01, 0.5]
    correct = np.array(samples["correct"])
    robust = np.array(samples["robust"])
    assert correct.shape == (12,) and robust.shape == (12, 2)
    assert not correct[:3].any() and correct[3:].all()
    assert not robust[~correct].any()  # a misclassified sample is never robust
    assert (robust[:, 1] <= robust[:, 0]).all()  # robust at the larger eps implies robust at the smaller
    curve = [c["robust_accuracy"] for c in result.metrics["robust_accuracy"]]
    assert np.allclose(robust.mean(0), curve)  # the aggregate is the mean of the outcomes
    assert result.from_dict(result.to_dict()).samples == samples
