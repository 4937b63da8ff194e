"""Data loaders and validation: npz, csv, image folders, IDX; clear errors for bad files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bastion.core.data import Dataset, save_npz, validate_for_model
from bastion.core.data_files import load_dataset
from bastion.core.errors import DataError


def test_npz_round_trip(tmp_path: Path):
    data = Dataset(np.random.rand(5, 1, 4, 4), np.arange(5) % 2, "d", ["a", "b"])
    save_npz(data, tmp_path / "d.npz")
    again = load_dataset(tmp_path / "d.npz")
    assert np.array_equal(again.x, data.x) and np.array_equal(again.y, data.y)
    assert again.class_names == ["a", "b"] and again.x.dtype == np.float32 and again.y.dtype == np.int64


def test_npz_errors(tmp_path: Path):
    np.savez(tmp_path / "noy.npz", x=np.zeros((2, 3)))
    with pytest.raises(DataError, match="needs arrays 'x' and 'y'"):
        load_dataset(tmp_path / "noy.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([object(), object()], dtype=object), y=np.zeros(2))
    with pytest.raises(DataError, match="object arrays are refused"):
        load_dataset(tmp_path / "obj.npz")
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "noy.npz").read_bytes()[:40])
    with pytest.raises(DataError, match="corrupt"):
        load_dataset(tmp_path / "trunc.npz")
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "missing.npz")
    (tmp_path / "data.npz").write_text("label,a\n1,2\n")  # wrongly named: a CSV called .npz
    with pytest.raises(DataError, match="unknown data format"):
        load_dataset(tmp_path / "data.npz")


def test_csv_with_named_and_string_labels(tmp_path: Path):
    (tmp_path / "t.csv").write_text("f1,species,f2\n1.0,cat,2\n3,dog,4\n5,cat,6\n")
    data = load_dataset(tmp_path / "t.csv", label="species")
    assert data.x.shape == (3, 2) and list(data.y) == [0, 1, 0] and data.class_names == ["cat", "dog"]
    with pytest.raises(DataError, match="no column named 'label'"):
        load_dataset(tmp_path / "t.csv", label="label")
    (tmp_path / "bad.csv").write_text("a,b\nx,1\n")
    with pytest.raises(DataError, match="non-numeric"):
        load_dataset(tmp_path / "bad.csv")
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(DataError, match="line 3"):
        load_dataset(tmp_path / "ragged.csv")
    (tmp_path / "nan.csv").write_text("a,y\nnan,1\n")
    with pytest.raises(DataError, match="NaN"):
        load_dataset(tmp_path / "nan.csv")


def test_image_folder(tmp_path: Path):
    from PIL import Image

    for cls, value in (("cats", 0), ("dogs", 255)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((6, 5, 3), value, np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = load_dataset(tmp_path)
    assert data.x.shape == (4, 3, 6, 5) and data.class_names == ["cats", "dogs"]
    assert data.x[:2].max() == 0.0 and data.x[2:].min() == 1.0
    (tmp_path / "dogs" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="unreadable image"):
        load_dataset(tmp_path)


def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    payload = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_and_labels(tmp_path: Path, compress: bool):
    suffix = ".gz" if compress else ""
    images = np.random.default_rng(0).integers(0, 256, (7, 4, 4), dtype=np.uint8)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(7, dtype=np.uint8) % 3, compress)
    data = load_dataset(tmp_path / f"train-images-idx3-ubyte{suffix}")
    assert data.x.shape == (7, 1, 4, 4) and np.allclose(data.x[0, 0] * 255, images[0])
    assert list(data.y) == [0, 1, 2, 0, 1, 2, 0]
    assert load_dataset(tmp_path).x.shape == (7, 1, 4, 4)  # the folder holding the pair works too


def test_idx_truncated_and_unpaired(tmp_path: Path):
    _write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(DataError, match="no labels file"):
        load_dataset(tmp_path / "x-images-idx3-ubyte")
    raw = (tmp_path / "x-images-idx3-ubyte").read_bytes()
    (tmp_path / "x-images-idx3-ubyte").write_bytes(raw[:-3])
    _write_idx(tmp_path / "x-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="truncated"):
        load_dataset(tmp_path / "x-images-idx3-ubyte")


def test_validation_against_a_model():
    data = Dataset(np.random.rand(4, 3), np.array([0, 1, 2, 3]))
    validate_for_model(data, 4, (3,))
    with pytest.raises(DataError, match="out of range"):
        validate_for_model(data, 3, (3,))
    with pytest.raises(DataError, match="does not match"):
        validate_for_model(data, 4, (1, 3))
    with pytest.raises(DataError, match="outside the model's bounds"):
        validate_for_model(data, 4, (3,), bounds=(0.2, 0.3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
                    elements=st.floats(allow_nan=True, allow_infinity=True, width=32)),
       y=hnp.arrays(np.int64, st.integers(0, 6), elements=st.integers(-3, 12)))
def test_dataset_validation_accepts_only_well_formed_data(x, y):
    """Property: a Dataset either validates to finite float32 inputs with 0 <= labels, or raises DataError."""
    try:
        data = Dataset(x, y)
    except DataError:
        shape_ok = x.ndim >= 2 and len(x) == len(y) and len(x) > 0
        assert not (shape_ok and np.all(np.isfinite(x)) and (len(y) == 0 or y.min() >= 0))
        return
    assert data.x.dtype == np.float32 and np.all(np.isfinite(data.x))
    assert data.y.dtype == np.int64 and data.y.min() >= 0 and len(data.x) == len(data.y) > 0
