"""Model loaders: every format found from its bytes; corrupt, truncated and wrongly named files fail clearly."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.core.errors import ModelLoadError
from bastion.core.target import Access
from bastion.demo.models import digits_cnn
from bastion.models import load_target, sniff_format
from bastion.models.export import save_model
from bastion.models.http_server import serving as serve
from bastion.models.metadata import ModelMetadata

META = ModelMetadata(n_classes=10, input_shape=[1, 8, 8], bounds=[0.0, 1.0], name="cnn")
ARCH = "bastion.demo.models:digits_cnn"


@pytest.fixture(scope="module")
def cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return digits_cnn().eval()


@pytest.fixture(scope="module")
def saved(cnn, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {fmt: save_model(cnn, folder / f"cnn.{fmt}", META) for fmt in ("pt", "pt2", "onnx", "safetensors")}


@pytest.mark.parametrize("fmt,kind,access", [
    ("pt", "torchscript", Access.GRADIENTS), ("pt2", "torch-export", Access.GRADIENTS),
    ("onnx", "onnx", Access.SCORES), ("safetensors", "safetensors", Access.GRADIENTS)])
def test_each_format_loads_and_matches_the_original(cnn, saved, fmt, kind, access):
    path = saved[fmt]
    assert sniff_format(path) == kind
    target = load_target(path, arch=ARCH, device="cpu")
    assert target.access == access and target.n_classes == 10 and target.input_shape == (1, 8, 8)
    x = torch.rand(6, 1, 8, 8)
    assert torch.allclose(target.logits(x), cnn(x), atol=1e-5)
    assert target.queries == 6


def test_format_comes_from_bytes_not_names(saved, tmp_path):
    disguised = tmp_path / "model.safetensors"
    shutil.copy(saved["onnx"], disguised)
    assert sniff_format(disguised) == "onnx"
    assert load_target(disguised, device="cpu").access == Access.SCORES


@pytest.mark.parametrize("fmt", ["pt", "pt2", "onnx", "safetensors"])
def test_truncated_files_fail_with_one_clear_error(saved, tmp_path, fmt):
    raw = saved[fmt].read_bytes()
    broken = tmp_path / f"broken.{fmt}"
    broken.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelLoadError) as info:
        load_target(broken, arch=ARCH, device="cpu")
    assert "\n" not in str(info.value)


def test_garbage_missing_and_weights_without_arch(saved, tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(ModelLoadError, match="unknown model format"):
        load_target(tmp_path / "garbage.pt")
    with pytest.raises(ModelLoadError, match="not found"):
        load_target(tmp_path / "nope.pt")
    with pytest.raises(ModelLoadError, match="--arch"):
        load_target(saved["safetensors"])
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_target(saved["safetensors"], arch="bastion.demo.models:tabular_mlp")
    with pytest.raises(ModelLoadError, match="cannot import"):
        load_target(saved["safetensors"], arch="no_such_module_xyz:factory")


def test_shape_comes_from_data_when_the_file_has_none(cnn, tmp_path):
    scripted = torch.jit.trace(cnn, torch.zeros(1, 1, 8, 8))
    torch.jit.save(scripted, str(tmp_path / "plain.pt"))
    with pytest.raises(ModelLoadError, match="pass --data"):
        load_target(tmp_path / "plain.pt", device="cpu")
    from bastion.core.data import Dataset

    data = Dataset(np.random.rand(3, 1, 8, 8), np.zeros(3, int))
    assert load_target(tmp_path / "plain.pt", data=data, device="cpu").n_classes == 10


def test_skops_scores_and_labels(tmp_path):
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(0)
    x, y = rng.random((60, 5)).astype(np.float32), rng.integers(0, 3, 60)
    sio.dump(LogisticRegression(max_iter=500).fit(x, y), tmp_path / "lr.skops")
    sio.dump(LinearSVC().fit(x, y), tmp_path / "svm.skops")
    lr = load_target(tmp_path / "lr.skops")
    assert lr.access == Access.SCORES and lr.n_classes == 3 and lr.input_shape == (5,)
    assert np.allclose(lr.probabilities(x[:4]).numpy(), lr.estimator.predict_proba(x[:4]), atol=1e-6)
    svm = load_target(tmp_path / "svm.skops")
    assert svm.access == Access.LABELS and svm.labels(x[:3]).shape == (3,)
    (tmp_path / "cut.skops").write_bytes((tmp_path / "lr.skops").read_bytes()[:100])
    with pytest.raises(ModelLoadError):
        load_target(tmp_path / "cut.skops")


def test_pickle_files_are_refused_without_trust(cnn, tmp_path):
    torch.save(cnn.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    for path in (tmp_path / "weights.pt", tmp_path / "evil.pkl"):
        with pytest.raises(ModelLoadError, match="--trust"):
            load_target(path, arch=ARCH)
    target = load_target(tmp_path / "weights.pt", arch=ARCH, trust=True, device="cpu",
                         data=None if False else _digits_like())
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(target.logits(x), cnn(x), atol=1e-6)


def _digits_like():
    from bastion.core.data import Dataset

    return Dataset(np.random.rand(2, 1, 8, 8), np.zeros(2, int))


def test_http_endpoint_scores_and_labels():
    weights = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)

    def proba(x: np.ndarray) -> np.ndarray:
        z = x @ weights
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    info = {"n_classes": 3, "input_shape": [4], "output": "probabilities", "bounds": [0, 1]}
    x = np.random.default_rng(2).random((9, 4)).astype(np.float32)
    with serve(proba, info) as url:
        target = load_target(url, max_queries=12)
        assert target.access == Access.SCORES and target.n_classes == 3
        assert np.allclose(target.probabilities(x).numpy(), proba(x), atol=1e-5)
        from bastion.core.errors import QueryBudgetExceeded

        with pytest.raises(QueryBudgetExceeded):
            target.labels(x)
    with serve(lambda v: proba(v).argmax(1), {**info, "output": "labels"}) as url:
        target = load_target(url)
        assert target.access == Access.LABELS
        assert np.array_equal(target.labels(x).numpy(), proba(x).argmax(1))


def test_http_endpoint_errors():
    with serve(lambda x: x, {"hello": "world"}) as url, pytest.raises(ModelLoadError, match="GET must answer"):
        load_target(url)
    with pytest.raises(ModelLoadError, match="unreachable"):
        load_target("http://127.0.0.1:9/predict")


def test_example_server_serves_a_saved_model(tmp_path: Path):
    import socket
    import subprocess
    import sys
    import time

    cnn = digits_cnn().eval()
    path = tmp_path / "cnn.pt"
    save_model(cnn, path, META)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    example = Path(__file__).resolve().parents[1] / "examples" / "http_server.py"
    proc = subprocess.Popen([sys.executable, str(example), str(path), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/predict"
        for _ in range(100):
            try:
                target = load_target(url)
                break
            except ModelLoadError:
                time.sleep(0.1)
        else:
            pytest.fail("the example server did not start")
        x = torch.rand(5, 1, 8, 8)
        assert target.access == Access.SCORES and target.n_classes == 10
        assert torch.allclose(target.probabilities(x), cnn(x).softmax(-1), atol=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
def test_an_onnx_graph_with_a_static_batch_size_is_queried_in_batches_of_that_size(cnn, tmp_path):
    """A graph exported with batch dimension 1 (torch.onnx's default) answers any number of inputs; a graph that
    does not take the data's shape is refused at load in one line, not mid-attack as an internal error."""
    from bastion.core.data import Dataset

    path = tmp_path / "static.onnx"
    torch.onnx.export(cnn, torch.rand(1, 1, 8, 8), str(path), dynamo=False)
    x = np.random.default_rng(0).random((7, 1, 8, 8), dtype=np.float32)
    target = load_target(path, data=Dataset(x, np.zeros(7, np.int64), "d"))
    with torch.no_grad():
        expected = cnn(torch.as_tensor(x)).numpy()
    assert np.allclose(target.logits(x), expected, atol=1e-4)
    wrong = Dataset(np.zeros((3, 1, 4, 4), np.float32), np.zeros(3, np.int64), "small")
    with pytest.raises(ModelLoadError, match="fails on inputs of shape"):
        load_target(path, data=wrong)
