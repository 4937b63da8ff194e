"""Hardened models export to TorchScript, ONNX and safetensors and load back with the same decisions; the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

from bastion.core.data import save_npz
from bastion.core.registry import get
from bastion.models import load_target
from bastion.models.export import save_model
from bastion.models.metadata import ModelMetadata

from .mitigation_fixtures import digits, mlp_target

META = ModelMetadata(n_classes=10, input_shape=[1, 8, 8], bounds=[0.0, 1.0])


@pytest.fixture(scope="module")
def hardened() -> dict[str, torch.nn.Module]:
    train, test = digits()
    data = test.head(40)
    models = {}
    for name, params in (("fast-at", {"eps": 0.1, "epochs": 1, "eval_eps": None}),
                         ("squeeze", {"bits": 2, "eps": [0.1], "attack": "pgd"}),
                         ("spatial-smooth", {"window": 3, "eps": [0.1], "attack": "pgd"}),
                         ("top-k", {"k": 2, "eps": None}), ("reverse-sigmoid", {"eps": None})):
        defense = get("defenses", name)(**params)
        defense.run(mlp_target(), data, train_data=train.head(256))
        models[name] = defense.artifact_
    return models


@pytest.mark.parametrize("name", ["fast-at", "squeeze", "spatial-smooth", "top-k", "reverse-sigmoid"])
@pytest.mark.parametrize("suffix", [".pt", ".onnx"])
def test_hardened_models_round_trip(hardened, tmp_path, name, suffix):
    _, test = digits()
    x = torch.as_tensor(test.x[:64])
    path = save_model(hardened[name], tmp_path / f"model{suffix}", META)
    loaded = load_target(path, device="cpu")
    with torch.no_grad():
        expected = hardened[name](x).argmax(-1)
    assert torch.equal(loaded.labels(x).cpu(), expected)


def test_adversarially_trained_weights_load_as_safetensors(hardened, tmp_path):
    _, test = digits()
    path = save_model(hardened["fast-at"], tmp_path / "model.safetensors", META)
    loaded = load_target(path, arch="tests.mitigation_fixtures:digits_mlp", device="cpu")
    x = torch.as_tensor(test.x[:64])
    with torch.no_grad():
        assert torch.allclose(loaded.logits(x), hardened["fast-at"](x), atol=1e-6)


def test_smoothed_model_exports_to_onnx(tmp_path):
    defense = get("defenses", "smooth")(sigma=0.1, n=50, samples=8, eval_eps=None)
    _, test = digits()
    defense.run(mlp_target(), test.head(20))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = save_model(defense.artifact_, tmp_path / "smoothed.onnx", META)
    loaded = load_target(path, device="cpu")
    accuracy = (loaded.labels(test.x[:100]).cpu().numpy() == test.y[:100]).mean()
    assert accuracy >= 0.85


def test_cli_adv_train_saves_a_hardened_model(tmp_path):
    train, test = digits()
    model, train_path, test_path, out = (tmp_path / n for n in ("mlp.pt", "train.npz", "test.npz", "hard.onnx"))
    save_model(mlp_target().model, model, META)
    save_npz(train.head(400), train_path)
    save_npz(test.head(60), test_path)
    run = subprocess.run([sys.executable, "-m", "bastion", "defend", "adv-train", str(model), "--data", str(test_path),
                          "--train-data", str(train_path), "--eps", "0.1", "--epochs", "2", "--steps", "3",
                          "--attack", "pgd", "--out", str(out), "--device", "cpu", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    metrics = result["metrics"]
    assert result["attack"] == "adv-train" and metrics["saved_to"] == str(out)
    assert {"clean_accuracy_cost", "robust_accuracy_gain", "robust_accuracy_before", "robust_accuracy_after"} <= set(
        metrics)
    reloaded = load_target(out, device="cpu")
    assert (reloaded.labels(test.x[:60]).cpu().numpy() == test.y[:60]).mean() == pytest.approx(
        metrics["clean_accuracy_after"], abs=1e-6)


def test_cli_reports_missing_training_data_in_one_line(tmp_path):
    _, test = digits()
    model, test_path = tmp_path / "mlp.pt", tmp_path / "test.npz"
    save_model(mlp_target().model, model, META)
    save_npz(test.head(20), test_path)
    run = subprocess.run([sys.executable, "-m", "bastion", "defend", "trades", str(model), "--data", str(test_path),
                          "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--train-data" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("name,params", [("squeeze", {"bits": 2}), ("round", {"decimals": 1}),
                                         ("smooth", {"sigma": 0.1, "n": 20, "samples": 4})])
def test_wrappers_of_a_loaded_torchscript_model_export_to_onnx(tmp_path, name, params):
    _, test = digits()
    source = save_model(mlp_target().model, tmp_path / "mlp.pt", META)
    defense = get("defenses", name)(**params, **({"eval_eps": None} if name == "smooth" else {"eps": None}))
    defense.run(load_target(source, device="cpu"), test.head(20))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = save_model(defense.artifact_, tmp_path / "defended.onnx", META)
    accuracy = (load_target(path, device="cpu").labels(test.x[:100]).cpu().numpy() == test.y[:100]).mean()
    assert accuracy >= 0.85
