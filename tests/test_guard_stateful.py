"""The guard's stateful query detector (Chen, Carlini & Wagner 2020; `bastion.guard.stateful`): its k-NN scores
against a brute-force computation, a Jacobian-like stream mixed with natural queries flagged, natural replays not."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.guard.guard_policy import ExtractionRules
from bastion.guard.stateful import SharedQueries, StatefulDetector, knn_scores

RULES = ExtractionRules(stateful_quantile=0.001, stateful_k=1, stateful_hits=10, stateful_buffer=1000)


def _brute(queries: np.ndarray, buffer: np.ndarray, k: int) -> np.ndarray:
    out = []
    for i, q in enumerate(queries):
        pool = np.concatenate([buffer, queries[:i]])
        d = np.sqrt(((pool - q) ** 2).sum(1))
        d = np.sort(d[d > 1e-3])[:k]
        out.append(d.mean() if len(d) else np.inf)
    return np.asarray(out)


@pytest.mark.parametrize("k", [1, 3])
def test_scores_match_brute_force(k):
    rng = np.random.default_rng(0)
    buffer, queries = rng.random((50, 16)), rng.random((7, 16))
    queries[3] = buffer[5]  # an exact repeat is not its own neighbour
    queries[5] = queries[1] + 0.01  # a near copy of an earlier query in the same batch is
    got = knn_scores(queries, buffer.astype(np.float32), k)
    np.testing.assert_allclose(got, _brute(queries, buffer, k), rtol=1e-4, atol=1e-4)  # float32
    if k == 1:
        assert got[5] == pytest.approx(0.01 * 4, rel=1e-3)
    assert np.isinf(knn_scores(queries[:1], np.empty((0, 16), np.float32), k)).all()


def test_detector_counts_close_queries_in_its_window():
    detector = StatefulDetector(threshold=0.5, k=1, hits=3, buffer=10)
    far = np.arange(10)[:, None] * np.ones((1, 4)) * 10.0
    assert not detector.observe(far)
    assert not detector.observe(far[:2] + 0.1)  # two close queries
    assert detector.observe(far[2:3] + 0.1)  # the third
    assert detector.observe(far[:1] * 0 + 1000)  # still three close within the last 10
    for _ in range(20):
        assert detector.observe(far[:1] * 0 + 1000)  # repeats neither count nor flush the buffer
    for i in range(8):
        detector.observe(far[:1] * 0 + 2000 + 100 * i)
    assert not detector.observe(far[:1] * 0 + 5000)  # the close ones left the buffer


def test_a_stream_split_over_keys_is_flagged_only_with_the_tier_buffer():
    """Key A sends parents, key B their near copies (a Sybil split): B's own buffer never holds the parents, the
    tier's shared buffer does; the hits are B's, not A's, and natural far-apart queries on two keys raise none."""
    rng = np.random.default_rng(0)
    parents = rng.random((30, 16)).astype(np.float32) * 10
    children = parents + 0.01
    for scope, expect in (("key", False), ("tier", True)):
        shared = SharedQueries(100) if scope == "tier" else None
        a, b = (StatefulDetector(threshold=0.5, k=1, hits=5, buffer=50, shared=shared) for _ in range(2))
        assert not a.observe(parents)
        assert b.observe(children) is expect
        assert not a.observe(rng.random((5, 16)).astype(np.float32) * 10 + 100)  # A's own new queries: far
    shared = SharedQueries(100)
    c, d = (StatefulDetector(threshold=0.5, k=1, hits=5, buffer=50, shared=shared) for _ in range(2))
    grid = np.arange(40)[:, None] * np.ones((1, 16), np.float32) * 3.0  # 12 apart: never close
    assert not c.observe(grid[::2]) and not d.observe(grid[1::2])
    assert not d.observe(grid[:10])  # exact repeats of the other key's queries are not close queries either


def test_the_policy_takes_a_tier_scope_and_refuses_others():
    from bastion.core.errors import ParameterError
    from bastion.guard.guard_policy import parse_policy

    tier = parse_policy({"tiers": {"t": {"extraction": {"stateful_quantile": 0.001, "stateful_scope": "tier",
                                                        "stateful_shared_buffer": 500}}}}).tiers["t"]
    assert tier.extraction.stateful_scope == "tier" and tier.extraction.stateful_shared_buffer == 500
    with pytest.raises(ParameterError, match="stateful_scope"):
        parse_policy({"tiers": {"t": {"extraction": {"stateful_scope": "global"}}}})


def _jacobian_stream(demo, seeds: np.ndarray, n: int, step: float) -> np.ndarray:
    """Seeds, then rounds of Papernot et al.'s x + step·sign(∇F(x)[label]) from the previous round's points, with
    the victim's own gradient standing in for a substitute's (`attacks.extraction.jacobian.jacobian_step`; the
    attack retrains its substitute each round, so each parent is stepped from once here, not re-stepped alike)."""
    import torch

    from bastion.attacks.extraction.jacobian import jacobian_step
    from bastion.models import load_target

    model = load_target(demo.model_path, device="cpu").model
    rounds = [torch.as_tensor(seeds)]
    while sum(len(r) for r in rounds) < n:
        with torch.no_grad():
            labels = model(rounds[-1]).argmax(-1)
        rounds.append(jacobian_step(model, rounds[-1], labels, step, (0.0, 1.0)))
    return torch.cat(rounds)[:n].numpy()


def _first_flag(monitor, x: np.ndarray, batch: int = 20) -> int | None:
    for i in range(0, len(x), batch):
        monitor.observe(x[i:i + batch], np.zeros(len(x[i:i + batch]), int))
    return monitor.flagged_at


def test_jacobian_stream_with_natural_queries_is_flagged_replays_are_not(digits_demo):
    from bastion.guard.rules import ExtractionMonitor, Reference

    reference = Reference(digits_demo.train)
    test_x = np.asarray(digits_demo.test.x, np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(test_x))
    natural, seeds = test_x[order[:270]], test_x[order[270:370]]
    attack = np.concatenate([natural, _jacobian_stream(digits_demo, seeds, 700, 0.1)])  # evaluation first
    monitor = ExtractionMonitor(RULES, reference)
    at = _first_flag(monitor, attack)
    assert at is not None and at <= 1000 and monitor.flagged == ["extraction.stateful"]
    for seed in range(3):  # the test digits (never calibrated on) in random orders
        replay = test_x[np.random.default_rng(seed).permutation(len(test_x))]
        assert _first_flag(ExtractionMonitor(RULES, reference), replay) is None
    index_half = reference.index.numpy().reshape(-1, *test_x.shape[1:])  # the reference half, not calibrated on
    assert _first_flag(ExtractionMonitor(RULES, reference), index_half) is None


def test_through_the_server_a_second_key_sending_the_first_keys_neighbours_is_blocked(digits_demo, tmp_path):
    """Scope "tier": key b's near copies of key a's queries are caught through the running guard (b blocked from its
    next request on, a still served); the same requests under scope "key" block nobody."""
    import json

    from tests.guard_fixtures import digits_guard, fetch, sha

    parents = np.asarray(digits_demo.test.x[:40], np.float32)
    children = np.clip(parents + 0.01, 0, 1)
    for scope, blocked in (("key", 200), ("tier", 403)):
        policy = {"default_tier": None,
                  "keys": [{"id": k, "sha256": sha(f"secret-{k}"), "tier": "t"} for k in ("a", "b")],
                  "tiers": {"t": {"extraction": {"stateful_quantile": 0.001, "stateful_hits": 10,
                                                 "stateful_scope": scope, "monitor_batch": 20,
                                                 "action": "block"}}}}
        (tmp_path / scope).mkdir()
        with digits_guard(digits_demo, policy, tmp_path / scope) as (url, _, _):
            def ask(key: str, x: np.ndarray) -> int:
                body = json.dumps({"inputs": x.tolist()}).encode()
                return fetch(url + "/predict", body, {"Authorization": f"Bearer secret-{key}"})[0]

            assert ask("a", parents[:20]) == 200 and ask("a", parents[20:]) == 200
            assert ask("b", children[:20]) == 200  # 20 close queries: the monitors run after this answer
            assert ask("b", children[20:]) == blocked
            assert ask("a", parents[:1]) == 200
