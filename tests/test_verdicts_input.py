"""Issue 21 item 4: say it when the input is off — class order of image folders, data outside the model's bounds,
and the model assumptions of `equation` and `tree` extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from bastion.attacks.extraction.equation import EquationSolving
from bastion.attacks.extraction.tree import TreePathFinding
from bastion.core.data import Dataset
from bastion.core.data_files import load_dataset
from bastion.core.errors import DataError
from bastion.core.target import FunctionTarget
from bastion.families import judged
from bastion.models.export import save_model
from bastion.models.loader import load_target
from bastion.models.metadata import ModelMetadata

QUIET = {"ood_samples": 0, "transfer_samples": 0, "monitor": False}


class MeanBrightness(torch.nn.Module):
    """Class k for images whose mean brightness is in the k-th third: a model whose labels we know."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        centres = torch.tensor([1 / 6, 1 / 2, 5 / 6])
        return -(m[:, None] - centres) ** 2 * 100


def image_folder(root, names_by_class):
    """Folders named `names_by_class[k]` holding images of class k's brightness."""
    for k, name in enumerate(names_by_class):
        (root / name).mkdir(parents=True)
        for i in range(4):
            level = int(255 * (k / 3 + 1 / 6)) + i
            Image.fromarray(np.full((6, 6), level, np.uint8)).save(root / name / f"{i}.png")
    return root


def test_image_folder_classes_follow_the_models_metadata(tmp_path):
    names = ["dark", "mid", "bright"]  # the model's order; alphabetical would be bright, dark, mid
    model_path = tmp_path / "brightness.pt2"
    save_model(MeanBrightness(), model_path, ModelMetadata(n_classes=3, input_shape=[1, 6, 6], bounds=[0.0, 1.0],
                                                           class_names=names))
    data = load_dataset(image_folder(tmp_path / "images", names))
    assert data.class_names == ["bright", "dark", "mid"]  # as found on disk
    target = load_target(model_path, data=data, device="cpu")
    assert data.class_names == names  # re-ordered by the model's metadata
    accuracy = float((target.labels(torch.as_tensor(data.x)).cpu().numpy() == data.y).mean())
    assert accuracy == 1.0
    other = load_dataset(image_folder(tmp_path / "other", ["dark", "mid", "sunny"]))
    with pytest.raises(DataError, match=r"classes \['sunny'\] are not among the model's classes"):
        load_target(model_path, data=other, device="cpu")


def test_classes_option_orders_a_folder_without_metadata(tmp_path):
    data = load_dataset(image_folder(tmp_path / "images", ["dark", "mid", "bright"]), classes=["dark", "mid",
                                                                                              "bright"])
    assert data.class_names == ["dark", "mid", "bright"]
    assert data.y[data.x.reshape(len(data), -1).mean(1).argmax()] == 2
    with pytest.raises(DataError, match="does not match"):
        load_dataset(tmp_path / "images", classes=["a", "b", "c"])


def test_numeric_class_folders_sort_numerically(tmp_path):
    folders = [str(k) for k in range(12)]
    root = tmp_path / "digits"
    for k in folders:
        (root / k).mkdir(parents=True)
        Image.fromarray(np.full((2, 2), int(k), np.uint8)).save(root / k / "a.png")
    data = load_dataset(root)
    assert data.class_names == folders
    assert np.allclose(data.x[:, 0, 0, 0] * 255, data.y, atol=1e-3)


def test_data_outside_the_models_bounds_is_refused_with_the_fix(tmp_path):
    model_path = tmp_path / "brightness.pt2"
    save_model(MeanBrightness(), model_path, ModelMetadata(n_classes=3, input_shape=[1, 6, 6], bounds=[0.0, 1.0]))
    pixels = Dataset(np.random.default_rng(0).integers(0, 256, (5, 1, 6, 6)).astype(np.float32), np.zeros(5, int))
    with pytest.raises(DataError, match="divide the data by 255"):
        load_target(model_path, data=pixels, device="cpu")
    standardised = Dataset(pixels.x / 255 - 0.5, pixels.y)
    with pytest.raises(DataError, match="standardisation inside the model"):
        load_target(model_path, data=standardised, device="cpu")
    load_target(model_path, data=Dataset(pixels.x / 255, pixels.y), device="cpu")  # fits


def sklearn_target(estimator, n_classes, x):
    return FunctionTarget(lambda v: estimator.predict_proba(v.reshape(len(v), -1)), n_classes, x.shape[1:],
                          "probabilities", (float(x.min()), float(x.max())))


def test_equation_extracts_a_standardising_pipeline_and_says_when_a_model_is_not_logistic():
    x, y = load_breast_cancer(return_X_y=True)
    x = x.astype(np.float32)
    pool, test = Dataset(x[:400], y[:400]), Dataset(x[400:], y[400:])
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(pool.x, pool.y)
    result = EquationSolving(**QUIET).run(sklearn_target(pipeline, 2, x), test, pool=pool)
    assert result.metrics["assumption_holds"] is True
    assert result.metrics["fidelity"] >= 0.99  # the scaling folds into W and b: still exact
    forest = RandomForestClassifier(30, random_state=0).fit(pool.x, pool.y)
    result = EquationSolving(**QUIET).run(sklearn_target(forest, 2, x), test, pool=pool)
    assert result.metrics["assumption_holds"] is False
    assert "assumption does not hold" in judged(result).findings[0].description
    assert judged(result).findings[0].evidence["assumption_holds"] is False


def test_tree_says_a_random_forest_is_not_a_single_tree_and_stops():
    x, y = make_classification(2000, 5, n_informative=4, n_redundant=0, n_classes=4, random_state=0)
    x = ((x - x.min(0)) / (x.max(0) - x.min(0))).astype(np.float32)
    test = Dataset(x[1500:], y[1500:])
    tree = DecisionTreeClassifier(max_depth=5, random_state=0).fit(x[:1500], y[:1500])
    ok = TreePathFinding(**QUIET).run(sklearn_target(tree, 4, x), test)
    assert ok.metrics["assumption_holds"] and ok.metrics["finished"] and ok.metrics["stopped"] is None
    forest = RandomForestClassifier(30, random_state=0).fit(x[:1500], y[:1500])
    result = TreePathFinding(**QUIET).run(sklearn_target(forest, 4, x), test)
    assert result.metrics["stopped"] == "not a single tree" and not result.metrics["assumption_holds"]
    assert result.metrics["boxes"] < 200  # stopped early, not after thousands of boxes
    assert "not a single decision tree" in judged(result).findings[0].description


def test_tree_stops_at_its_deadline():
    x, y = make_classification(2000, 5, n_informative=4, n_redundant=0, n_classes=4, random_state=0)
    x = ((x - x.min(0)) / (x.max(0) - x.min(0))).astype(np.float32)
    forest = RandomForestClassifier(30, random_state=0).fit(x[:1500], y[:1500])
    # the single-tree test switched off: only the deadline (a tiny one) can stop the exploration
    result = TreePathFinding(deadline=1e-6, max_inconsistent=1.0, **QUIET).run(sklearn_target(forest, 4, x),
                                                                               Dataset(x[1500:], y[1500:]))
    assert result.metrics["stopped"] == "deadline" and not result.metrics["finished"]
    assert "deadline" in judged(result).findings[0].description
