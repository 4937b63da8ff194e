"""Objects and data from command-line style arguments: `--name value` pairs build an attack or defense, paths load
datasets. The CLI's parent process and the sandboxed worker (which builds the job from names, parameters and
paths) share these, so both paths give the same objects and the same one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion.core.data import Dataset
from bastion.core.data_files import load_dataset
from bastion.core.errors import ParameterError
from bastion.core.params import accepts, construct, parse_extra

SEED_MAX = 2**32 - 1


def check_seed(seed: Any, option: str = "--seed") -> int:
    """A seed every random generator accepts (NumPy, torch, Python): a whole number in [0, 2^32 - 1]."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
        raise ParameterError(f"{option} must be a whole number in [0, {SEED_MAX}], got {str(seed)[:40]}")
    return seed


def load_data(path: Path | None, label: str | None, n_samples: int | None, role: str = "data") -> Dataset | None:
    """The dataset at `path` (None without one), cut to its first `n_samples` rows."""
    if path is None:
        return None
    if n_samples is not None and n_samples < 1:
        raise ParameterError(f"--n-samples must be at least 1, got {n_samples}")
    data = load_dataset(path, label=label, name=f"{role} ({Path(path).name})")
    return data.head(n_samples)


def build_with_datasets(cls: type, args: list[str], defaults: dict[str, Any], label: str | None,
                        what: str, base: Path | None = None) -> tuple[Any, dict[str, Dataset]]:
    """Build `cls` from `--name value` pairs (plus `defaults` it accepts) and load the paths it names as datasets.

    Names in `cls.dataset_params` are data files handed to `run`; every other pair is an `__init__` parameter.
    Relative data paths are read from `base` (the user's folder; default: the current one)."""
    params = parse_extra(args)
    for key, value in defaults.items():
        if value is not None and accepts(cls, key):
            params.setdefault(key, value)
    if "seed" in params:
        check_seed(params["seed"])
    paths = {role: params.pop(role) for role in getattr(cls, "dataset_params", ()) if role in params}
    obj = construct(cls, params, what)
    folder = Path(base) if base is not None else Path()
    return obj, {role: load_data(folder / str(path), label, None, role) for role, path in paths.items()}
