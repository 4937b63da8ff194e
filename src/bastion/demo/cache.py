"""Demo models: trained through the shared Trainer on first use and cached as `torch.export` (.pt2) programs with
metadata (TorchScript, which torch has deprecated, is no longer the demo's format)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from bastion.core.data import Dataset, save_npz
from bastion.core.training import Trainer, accuracy
from bastion.demo import datasets as demo_data
from bastion.demo.models import digits_cnn, tabular_mlp
from bastion.models.export import save_model
from bastion.models.metadata import ModelMetadata

CACHE_VERSION = "v2"  # v2: .pt2 instead of TorchScript


def cache_dir() -> Path:
    """`$BASTION_CACHE_DIR`, else `$XDG_CACHE_HOME/bastion`, else `~/.cache/bastion`."""
    if os.environ.get("BASTION_CACHE_DIR"):
        return Path(os.environ["BASTION_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "bastion"


@dataclass
class DemoModel:
    """A cached demo model: its file, its train and test data (as .npz files too) and its test accuracy."""

    name: str
    model_path: Path
    train: Dataset
    test: Dataset
    train_path: Path
    test_path: Path
    arch: str


def _train_digits(train: Dataset, seed: int, progress: bool) -> torch.nn.Module:
    model = digits_cnn()
    Trainer(epochs=15, batch_size=64, lr=2e-3, seed=seed, device="cpu", show_progress=progress,
            description="training demo digits CNN").fit(model, train.x, train.y)
    return model


def _train_cancer(train: Dataset, seed: int, progress: bool) -> torch.nn.Module:
    model = tabular_mlp(train.x.shape[1], 2, train.x.mean(axis=0), train.x.std(axis=0))
    Trainer(epochs=60, batch_size=32, lr=1e-3, seed=seed, device="cpu", show_progress=progress,
            description="training demo breast-cancer MLP").fit(model, train.x, train.y)
    return model


_SPECS = {
    "digits-cnn": (demo_data.digits, _train_digits, "bastion.demo.models:digits_cnn", (0.0, 1.0)),
    "breast-cancer-mlp": (demo_data.breast_cancer, _train_cancer, "bastion.demo.models:tabular_mlp", None),
}
DEMO_MODELS = tuple(_SPECS)


def demo_model(name: str, seed: int = 0, progress: bool = True, directory: Path | None = None) -> DemoModel:
    """Return the cached demo model `name`, training and saving it first if needed."""
    load, train_fn, arch, bounds = _SPECS[name]
    train, test = load(seed)
    folder = (directory or cache_dir()) / "demo" / f"{CACHE_VERSION}-torch{torch.__version__.split('+')[0]}-s{seed}"
    model_path = folder / f"{name}.pt2"
    train_path, test_path = folder / f"{name}-train.npz", folder / f"{name}-test.npz"
    if not (model_path.exists() and train_path.exists() and test_path.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        model = train_fn(train, seed, progress)
        lo = min(float(train.x.min()), float(test.x.min()))
        hi = max(float(train.x.max()), float(test.x.max()))
        meta = ModelMetadata(n_classes=len(train.class_names), input_shape=list(train.input_shape),
                             bounds=list(bounds or (lo, hi)), class_names=train.class_names, name=name)
        tmp = model_path.with_suffix(".tmp.pt2")
        save_model(model, tmp, meta)
        save_npz(train, train_path)
        save_npz(test, test_path)
        tmp.replace(model_path)
    return DemoModel(name, model_path, train, test, train_path, test_path, arch)


def demo_accuracy(model: DemoModel) -> float:
    """Test accuracy of a cached demo model."""
    from bastion.models import load_target

    module = load_target(model.model_path, data=model.test, device="cpu").model
    return accuracy(module, model.test.x, model.test.y)
