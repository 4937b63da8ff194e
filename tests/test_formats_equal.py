"""Issue 21 item 2: every format is equal — the same network as TorchScript, `.pt2`, safetensors + --arch and ONNX
gets the same findings up to its access level; `.pt2` mode detection; scikit-learn joblib/pickle after a clean scan
and --trust; reference models trained when forking is unsafe."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import joblib
import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from bastion.assess.defaults import default_plan
from bastion.assess.runner import Runner
from bastion.attacks.privacy import references
from bastion.core.data import Dataset, save_npz
from bastion.core.errors import ModelLoadError
from bastion.evaluation.checks import check_setup
from bastion.families.grading import BLACK_BOX_NOTE
from bastion.families.inputs import Inputs
from bastion.models import load_target
from bastion.models.export import save_model
from bastion.models.factory import build
from bastion.models.metadata import METADATA_KEY, ModelMetadata

FORMATS = {"torchscript": ".pt", "torch-export": ".pt2", "safetensors": ".safetensors", "onnx": ".onnx"}
SMALL_PLAN = {
    "seed": 1, "device": "cpu",
    "families": {
        "evasion": {"n_samples": 40, "shards": 1, "eps": [0.5, 2.0],
                    "attacks": {"fgsm": {}, "pgd": {"steps": 5}}},
        "privacy": {"n_members": 60, "n_nonmembers": 60, "attacks": {"loss": {"n_bootstrap": 20}}},
        "extraction": False, "backdoor": False, "supply_chain": {"enabled": True},
    },
}


@pytest.fixture(scope="module")
def one_network(cancer_demo, tmp_path_factory):
    """The demo breast-cancer MLP's weights saved in every format Bastion loads from bytes."""
    folder = tmp_path_factory.mktemp("formats")
    program = torch.export.load(str(cancer_demo.model_path))  # the demo's own .pt2
    model = build(cancer_demo.arch)
    model.load_state_dict(program.state_dict)
    model.eval()
    lo, hi = float(cancer_demo.test.x.min()), float(cancer_demo.test.x.max())
    meta = ModelMetadata(n_classes=2, input_shape=list(cancer_demo.test.input_shape), bounds=[lo, hi])
    return {fmt: save_model(model, folder / f"mlp{suffix}", meta) for fmt, suffix in FORMATS.items()}


def assess(path, cancer_demo):
    inputs = Inputs(model=str(path), data=cancer_demo.test, train_data=cancer_demo.train, arch=cancer_demo.arch,
                    device="cpu", data_path=str(cancer_demo.test_path), train_path=str(cancer_demo.train_path))
    plan = default_plan(inputs, inputs.describe(), seed=1, device="cpu").merged(SMALL_PLAN)
    if inputs.describe().access != "gradients":  # what a score API is evaluated with
        plan = plan.merged({"families": {"evasion": {"attacks": {"square": {"queries": 200}}}}})
    return Runner(show_progress=False).run(inputs, plan)


def test_the_same_network_gets_the_same_findings_in_every_format(one_network, cancer_demo):
    runs = {fmt: assess(path, cancer_demo) for fmt, path in one_network.items()}
    for fmt, a in runs.items():
        assert all(not f.errors for f in a.families), (fmt, [f.errors for f in a.families])
        assert a.grade != "incomplete", fmt
    white = ["torchscript", "torch-export", "safetensors"]
    reference = runs["torchscript"]
    for fmt in white:
        a = runs[fmt]
        for family in ("evasion", "privacy"):
            mine, theirs = a.family(family), reference.family(family)
            assert mine.grade == theirs.grade, (fmt, family)
            assert sorted(f.title for f in mine.findings) == sorted(f.title for f in theirs.findings), (fmt, family)
            assert mine.headline == pytest.approx(theirs.headline, abs=1e-6), (fmt, family)
        sanity = {c.name: c.passed for c in a.family("evasion").sanity}
        assert sanity == {c.name: c.passed for c in reference.family("evasion").sanity}, fmt
        assert BLACK_BOX_NOTE not in a.family("evasion").reason
    onnx = runs["onnx"]
    # a score API: the same membership figures (LOSS needs scores only), evasion marked as an upper bound
    assert onnx.family("privacy").headline == pytest.approx(reference.family("privacy").headline, abs=1e-4)
    assert BLACK_BOX_NOTE in onnx.family("evasion").reason
    assert onnx.family("evasion").headline["clean_accuracy"] == pytest.approx(
        reference.family("evasion").headline["clean_accuracy"], abs=1e-6)


def test_pt2_saved_after_eval_is_in_eval_mode(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.3),
                              torch.nn.Linear(8, 3))
    data = Dataset(np.random.default_rng(0).random((16, 4), dtype=np.float32), np.arange(16) % 3)
    meta = ModelMetadata(n_classes=3, input_shape=[4], bounds=[0.0, 1.0])
    net.eval()
    evaluated = load_target(save_model(net, tmp_path / "eval.pt2", meta), data=data, device="cpu")
    assert "training mode" not in check_setup(evaluated, torch.as_tensor(data.x)).detail
    net.train()  # exported as it is (save_model exports in eval mode), the way a user may save it
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(net, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "train.pt2"), extra_files={METADATA_KEY: meta.to_json()})
    trained = load_target(tmp_path / "train.pt2", data=data, device="cpu")
    assert "training mode" in check_setup(trained, torch.as_tensor(data.x)).detail


@pytest.mark.parametrize("fixed", [1, 3])
def test_pt2_exported_with_a_fixed_batch_size_takes_any_batch(tmp_path, fixed):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    meta = ModelMetadata(n_classes=3, input_shape=[4], bounds=[0.0, 1.0])
    program = torch.export.export(net, (torch.zeros(fixed, 4),))  # no dynamic batch dimension
    torch.export.save(program, str(tmp_path / "fixed.pt2"), extra_files={METADATA_KEY: meta.to_json()})
    x = torch.rand(7, 4)
    target = load_target(tmp_path / "fixed.pt2", device="cpu")
    assert torch.allclose(target.logits(x), net(x), atol=1e-6)  # 7 inputs: chunks of `fixed`, the last one padded
    grads = []
    for model in (target.model, net):  # gradients flow through the chunks as through the eager network
        xr = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xr), torch.zeros(7, dtype=torch.long), reduction="sum").backward()
        grads.append(xr.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize("dump", ["joblib", "pickle"])
def test_sklearn_joblib_and_pickle_load_after_a_clean_scan_with_trust(tmp_path, cancer_demo, dump):
    x, y = cancer_demo.train.x.reshape(len(cancer_demo.train), -1), cancer_demo.train.y
    forest = RandomForestClassifier(10, random_state=0).fit(x, y)
    path = tmp_path / f"forest.{dump}"
    if dump == "joblib":
        joblib.dump(forest, path)
    else:
        path.write_bytes(pickle.dumps(forest))
    with pytest.raises(ModelLoadError, match="--trust"):
        load_target(path, data=cancer_demo.test, device="cpu")
    target = load_target(path, data=cancer_demo.test, device="cpu", trust=True)
    test_x = cancer_demo.test.x.reshape(len(cancer_demo.test), -1)
    assert np.allclose(target.probabilities(torch.as_tensor(test_x)).numpy(), forest.predict_proba(test_x), atol=1e-6)
    save_npz(cancer_demo.test, tmp_path / "test.npz")
    run = subprocess.run([sys.executable, "-m", "bastion", "attack", "extraction", "knockoff", str(path), "--trust",
                          "--data", str(tmp_path / "test.npz"), "--pool", str(tmp_path / "test.npz"), "--budget",
                          "50", "--epochs", "2", "--ood-samples", "0", "--transfer-samples", "0", "--json",
                          "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["metrics"]["access"] == "scores"


def test_reference_models_train_in_fresh_workers_when_forking_is_unsafe(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.random((120, 5)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    spec = references.ReferenceSpec(2, references.Trainer(), estimator=LogisticRegression(max_iter=200))
    masks = references.balanced_masks(120, 4, rng)
    forked = references.train_references(spec, x, y, masks, x[:20], seed=3, n_jobs=2)

    def unsafe(*_args, **_kwargs):
        raise RuntimeError("Unable to handle autograd's threading in combination with fork-based multiprocessing")

    monkeypatch.setattr(references, "_in_forks", unsafe)
    fresh = references.train_references(spec, x, y, masks, x[:20], seed=3, n_jobs=2)
    assert fresh.shape == (4, 20, 2) and np.allclose(fresh, forked, atol=1e-6)
