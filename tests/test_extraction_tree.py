"""Decision-tree extraction by path finding: every leaf found, budgets, access, merged leaves, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.preprocessing import MinMaxScaler
from sklearn.tree import DecisionTreeClassifier

from bastion.attacks.extraction.tree import TreePathFinding
from bastion.core.data import Dataset
from bastion.core.errors import AccessError, ParameterError
from bastion.core.registry import get
from bastion.core.target import Access, FunctionTarget

FAST = {"monitor": False, "transfer_samples": 50, "ood_samples": 500}


@pytest.fixture(scope="module")
def victim():
    """A depth-5 tree on 5 features and 4 classes whose 29 leaves all answer distinct scores."""
    x, y = make_classification(3000, 5, n_informative=5, n_redundant=0, n_classes=4, random_state=0)
    x = MinMaxScaler().fit_transform(x).astype(np.float32)
    tree = DecisionTreeClassifier(max_depth=5, min_samples_leaf=10, random_state=0).fit(x[:2000], y[:2000])
    leaf_scores = tree.tree_.value[tree.tree_.children_left == -1, 0]
    leaf_scores = leaf_scores / leaf_scores.sum(1, keepdims=True)
    assert len(np.unique(np.round(leaf_scores * 1e6), axis=0)) == tree.tree_.n_leaves  # the set-up's premise
    return tree, Dataset(x[2000:], y[2000:], "held out"), Dataset(x[:2000], y[:2000], "train")


def api(tree, max_queries=None):
    return FunctionTarget(lambda a: tree.predict_proba(a.astype(np.float64)), 4, (5,), "probabilities",
                          max_queries=max_queries, name="tree")


def test_path_finding_recovers_every_leaf(victim):
    tree, test, _ = victim
    target = api(tree)
    attack = TreePathFinding(**FAST)
    result = attack.run(target, test)
    m = result.metrics
    assert m["boxes"] == m["distinct_scores"] == tree.tree_.n_leaves
    assert m["finished"] and m["fidelity"] >= 0.99 and m["fidelity_ood"] >= 0.99
    assert result.queries == target.queries == m["curve"][0]["queries"]
    assert m["queries_per_box"] == pytest.approx(result.queries / m["boxes"])
    # the copy answers the leaf's scores, not just its label, away from the boundaries (within tol of them)
    copied = attack.substitute_(torch.as_tensor(test.x)).exp().numpy()
    assert np.mean(np.abs(copied - tree.predict_proba(test.x)).max(1) < 1e-5) >= 0.99
    # each box lies inside its leaf: box centres fall in the leaf whose scores the box carries
    explorer = attack.explorer_
    centres = ((explorer.box_low + explorer.box_high) / 2).numpy()
    assert np.allclose(tree.predict_proba(centres), explorer.box_scores.numpy(), atol=1e-6)
    assert get("attacks", "tree", family="extraction") is TreePathFinding


def test_smaller_budgets_give_lower_fidelity_and_stop_cleanly(victim):
    tree, test, train = victim
    result = TreePathFinding(budget="500,1500", **FAST).run(api(tree), test)
    curve = result.metrics["curve"]
    assert [c["budget"] for c in curve] == [500, 1500]
    assert all(c["queries"] <= c["budget"] for c in curve) and not result.metrics["finished"]
    assert curve[0]["fidelity"] < curve[1]["fidelity"] < 0.99
    assert result.metrics["boxes"] < tree.tree_.n_leaves
    limited = api(tree, max_queries=800)  # the target's own budget stops exploration without an error
    capped = TreePathFinding(starts=3, **FAST).run(limited, test, pool=train)
    assert capped.queries <= 800 and not capped.metrics["finished"] and "incomplete" not in capped.metrics
    assert 0.3 < capped.metrics["fidelity"] < 0.99
    with pytest.raises(ParameterError, match="first box"):
        TreePathFinding(budget=50).run(api(tree), test)
    with pytest.raises(ParameterError):
        TreePathFinding(tol=0.7)


def test_labels_only_is_refused_and_merged_scores_cost_fidelity(victim):
    tree, test, _ = victim
    with pytest.raises(AccessError):
        TreePathFinding(**FAST).run(api(tree).restrict(Access.LABELS), test)
    merged = TreePathFinding(defense="rounding:0", **FAST).run(api(tree), test)  # whole-number scores: leaves merge
    assert merged.metrics["distinct_scores"] <= 5 < merged.metrics["boxes"] < tree.tree_.n_leaves
    assert merged.metrics["fidelity"] < 0.9


def test_cli_extracts_a_saved_skops_tree(victim, tmp_path):
    import skops.io as sio

    tree, test, _ = victim
    sio.dump(tree, tmp_path / "tree.skops")
    np.savez(tmp_path / "test.npz", x=test.x, y=test.y)
    run = subprocess.run(
        [sys.executable, "-m", "bastion", "attack", "extraction", "tree", str(tmp_path / "tree.skops"),
         "--data", str(tmp_path / "test.npz"), "--budget", "5000", "--transfer-samples", "20",
         "--ood-samples", "200", "--device", "cpu", "--json"],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["attack"] == "tree" and out["family"] == "extraction"
    assert out["metrics"]["fidelity"] >= 0.99 and 0 < out["queries"] <= 5000
    assert out["metrics"]["boxes"] == tree.tree_.n_leaves and out["metrics"]["finished"]
