"""A `bastion attack` or `bastion defend` job by names, parameters and paths, with no objects in it.

The parent builds a JobSpec without importing PyTorch (it only parses arguments) and sends it to the sandboxed
worker, which builds the attack or defense through the registry, loads the data and the model, and runs: the whole
PyTorch import happens once, in the worker, while the parent is still parsing (issue 13, sandbox cost). With
`--no-sandbox` (or a model without code) this process builds the same objects from the same spec.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.core.arguments import build_with_datasets, check_seed, load_data
from bastion.core.data import Dataset, apply_classes
from bastion.core.errors import ParameterError
from bastion.core.image_data import _idx_labels_for
from bastion.core.params import parse_extra

KINDS = {"attacks": "attack", "defenses": "defense"}


@dataclass
class JobSpec:
    """`kind` "attacks" or "defenses"; `args` the `--name value` pairs; `defaults` (seed, arch) apply where the
    class accepts them; data paths are read relative to `cwd`, the user's folder (the worker runs in scratch)."""

    kind: str
    name: str
    family: str | None = None
    args: list[str] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    train_data: str | None = None
    label: str | None = None
    n_samples: int | None = None
    classes: list[str] = field(default_factory=list)
    cwd: str = field(default_factory=os.getcwd)
    module: str | None = None  # where the class is registered (read from the source): only it is imported

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ParameterError(f"unknown job kind {self.kind!r}")
        self.args = [self._absolute(a) for a in self.args]

    def _absolute(self, arg: str) -> str:
        """A parameter value that names an existing file or folder, relative to the user's folder, made absolute
        (the worker runs in its scratch folder; e.g. `--ground-truth truth.npz`); in a comma-separated list
        (`--reference a.pt,b.pt`), each such item."""
        key, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if arg.startswith("--") and not eq:
            return arg
        value = ",".join(self._absolute_path(v) for v in value.split(",")) if "," in value and not \
            self.path(value).exists() else self._absolute_path(value)
        return f"{key}={value}" if eq else value

    def _absolute_path(self, value: str) -> str:
        if value and not Path(value).is_absolute() and "://" not in value and self.path(value).exists():
            return str(self.path(value).absolute())
        return value

    @property
    def what(self) -> str:
        noun = KINDS[self.kind]
        return f"{self.family} {noun} '{self.name}'" if self.kind == "attacks" else f"{noun} '{self.name}'"

    def check(self) -> None:
        """What the parent can check without importing the registry: the module, the syntax of the parameters,
        the seed and the sample count (unknown parameters are named by the worker, which builds the object)."""
        if self.module is not None and not self.module.startswith(f"bastion.{self.kind}."):
            raise ParameterError(f"{self.module!r} is not a module of bastion.{self.kind}")
        parse_extra(self.args)
        if self.defaults.get("seed") is not None:
            check_seed(self.defaults["seed"])
        if self.n_samples is not None and self.n_samples < 1:
            raise ParameterError(f"--n-samples must be at least 1, got {self.n_samples}")

    def path(self, name: str) -> Path:
        return Path(self.cwd) / name

    def readable(self) -> list[str]:
        """Files the worker must read: every parameter value that names an existing path (a dataset it loads,
        with the labels file beside an IDX images file). `--data` and `--train-data` are loaded by the parent."""
        values = [a.partition("=")[2] or a for a in self.args]
        paths = [self.path(v) for value in values for v in ([value] if self.path(value).exists() else value.split(","))]
        paths = [p for p in paths if p.exists()]
        paths += [label for p in paths if p.is_file() and (label := _idx_labels_for(p)) is not None]
        return [str(p) for p in paths]

    def load_data(self) -> tuple[Dataset | None, Dataset | None]:
        """The `--data` and `--train-data` datasets (the parent loads them, as the user's own files)."""
        evaluation = load_data(_opt_path(self, self.data), self.label, self.n_samples)
        training = load_data(_opt_path(self, self.train_data), self.label, None, "train data")
        return evaluation, training


def plan_files(plan: Any) -> list[str]:
    """The files a plan's parameters name (e.g. a Neural Cleanse `reference` model, a `ground_truth` file): each
    string, list item or comma-separated item that is an existing file, made absolute in place (the sandboxed
    worker runs in its scratch folder and gets read-only access to exactly these)."""
    found: list[str] = []

    def absolute(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: absolute(v) for k, v in value.items()}
        if isinstance(value, list):
            return [absolute(v) for v in value]
        if not isinstance(value, str) or "://" in value:
            return value
        parts = [value] if Path(value).is_file() else value.split(",")
        if not all(Path(part).is_file() for part in parts):
            return value
        found.extend(str(Path(part).absolute()) for part in parts)
        return ",".join(str(Path(part).absolute()) for part in parts)

    if isinstance(plan, dict):
        plan.update(absolute(plan))
    return found


@dataclass
class Built:
    """The objects a spec names: the attack or defense, the evaluation data and the other datasets of `run`."""

    obj: Any
    evaluation: Dataset | None
    datasets: dict[str, Dataset]
    model_data: Dataset | None  # gives the model's input shape and bounds when its file does not carry them


def build(spec: JobSpec, evaluation: Dataset | None, training: Dataset | None = None) -> Built:
    """The attack or defense of `spec` (through the registry), with the datasets its parameters name loaded, and
    the `--data` / `--train-data` datasets the parent loaded (`JobSpec.load_data`)."""
    from bastion.core import registry

    if spec.module:
        importlib.import_module(spec.module)
    cls = registry.get(spec.kind, spec.name, spec.family)
    defaults = dict(spec.defaults)
    if spec.kind == "attacks" and spec.family == "evasion" and evaluation is not None:
        from bastion.assess.defaults import default_norm  # the norm `assess` would choose for this data

        defaults["norm"] = default_norm(evaluation.x.shape[1:])
    obj, datasets = build_with_datasets(cls, spec.args, defaults, spec.label, spec.what, Path(spec.cwd))
    if spec.kind == "attacks":
        if evaluation is None and not getattr(cls, "dataset_params", ()):
            raise ParameterError(f"{spec.what} needs --data")
        model_data = evaluation or next(iter(datasets.values()), None)
    else:
        if training is not None:
            datasets["train_data"] = training
        model_data = evaluation or training
    if spec.classes:
        for dataset in (evaluation, *datasets.values()):
            if dataset is not None:
                apply_classes(dataset, list(spec.classes))
    return Built(obj, evaluation, datasets, model_data)


def _opt_path(spec: JobSpec, name: str | None) -> Path | None:
    return None if name is None else spec.path(name)
