"""`load_pickled`: the only way Bastion unpickles, and only after a clean scan plus --trust."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from bastion.core.errors import ModelLoadError
from bastion.supplychain import load_pickled, scan_path
from bastion.supplychain.load import _RestrictedUnpickler

from .scan_corpus import OS_SYSTEM


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True)


def test_refuses_malicious_file_naming_the_finding(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(OS_SYSTEM)
    with pytest.raises(ModelLoadError) as exc:
        load_pickled(path, trust=True)
    message = str(exc.value)
    assert "os.system" in message and "critical" in message and "--trust" in message
    assert len(message.splitlines()) == 1


def test_refuses_clean_pickle_without_trust(tmp_path: Path) -> None:
    path = tmp_path / "net.pt"
    torch.save({"w": torch.ones(3)}, path)
    with pytest.raises(ModelLoadError, match="--trust"):
        load_pickled(path, trust=False)


def test_loads_state_dicts_and_full_modules(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    torch.save(net.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(net, tmp_path / "full.pt")
    for name in ("sd.pt", "legacy.pt"):
        state = load_pickled(tmp_path / name, trust=True)
        assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    module = load_pickled(tmp_path / "full.pt", trust=True)
    x = torch.randn(5, 4)
    assert isinstance(module, torch.nn.Sequential)
    assert torch.allclose(module.eval()(x), net.eval()(x))


def test_loads_scikit_learn_joblib_and_pickle(tmp_path: Path, iris) -> None:
    x, y = iris
    forest = RandomForestClassifier(5, random_state=0).fit(x, y)
    svc = make_pipeline(StandardScaler(), SVC()).fit(x, y)
    joblib.dump(forest, tmp_path / "forest.joblib")
    joblib.dump(svc, tmp_path / "svc.joblib.gz", compress=("gzip", 3))
    (tmp_path / "svc.pkl").write_bytes(pickle.dumps(svc, protocol=2))
    assert np.array_equal(load_pickled(tmp_path / "forest.joblib", trust=True).predict(x), forest.predict(x))
    for name in ("svc.joblib.gz", "svc.pkl"):
        assert np.array_equal(load_pickled(tmp_path / name, trust=True).predict(x), svc.predict(x))


def test_refuses_formats_that_are_not_pickles(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.ones(3))
    with pytest.raises(ModelLoadError, match="not a pickle-based model"):
        load_pickled(tmp_path / "w.npy", trust=True)


def test_restricted_unpickler_blocks_names_off_the_allow_list() -> None:
    # Defence in depth: even if a scan were bypassed, find_class refuses before anything is called.
    with pytest.raises(pickle.UnpicklingError, match="allow-list"):
        _RestrictedUnpickler(io.BytesIO(OS_SYSTEM)).load()


def test_scan_records_allow_listed_globals_for_safe_loading(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(2, 2), tmp_path / "lin.pt")
    names = scan_path(tmp_path / "lin.pt").files[0].globals
    assert "torch.nn.modules.linear.Linear" in names and "torch._utils._rebuild_parameter" in names
