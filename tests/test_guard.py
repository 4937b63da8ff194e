"""`bastion guard`: the server on a free loopback port, each rule's allow and deny paths, policy validation,
hostile requests (never a 5xx), and the audit log (tests/test_guard_durability.py kills a server process)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bastion.core.errors import ParameterError
from bastion.guard.guard_policy import parse_policy
from tests.guard_fixtures import digits_guard, fetch, keys_for

POLICY = {
    "default_tier": "open",
    "tiers": {
        "open": {"inputs": {"max_batch": 64, "max_body_bytes": 400_000}},
        "limited": {"rate": {"per_second": 0.5, "burst": 5}},
        "budget": {"rate": {"budget": 10}},
        "watched": {"extraction": {"prada_delta": 0.96, "prada_min_queries": 100, "action": "block"}},
        "ood": {"extraction": {"ood_share": 0.3, "ood_min_queries": 40, "action": "throttle",
                               "throttle_per_second": 0.2, "monitor_batch": 20}},
        "degraded": {"extraction": {"ood_share": 0.3, "ood_min_queries": 40, "action": "degrade",
                                    "monitor_batch": 20}},
        "labels": {"output": "label_only"},
        "rounded": {"output": "rounding:1"},
        "screened": {"detectors": {"squeeze_fpr": 0.02, "strip_frr": 0.02, "action": "reject"}},
    },
    "keys": keys_for(("limited", "budget", "watched", "ood", "degraded", "labels", "rounded", "screened")),
}


@pytest.fixture(scope="module")
def guard_url(digits_demo, tmp_path_factory):
    with digits_guard(digits_demo, POLICY, tmp_path_factory.mktemp("guard")) as running:
        yield running


def _call(url: str, body: bytes | None = None, key: str | None = None, path: str = "/predict",
          headers: dict | None = None) -> tuple[int, dict, dict]:
    status, raw, got = fetch(url + path + (f"?api_key=secret-{key}" if key else ""), body, headers)
    return status, json.loads(raw) if path != "/metrics" else {"text": raw.decode()}, got


def _post(url: str, x, key: str | None = None) -> tuple[int, dict, dict]:
    return _call(url, json.dumps({"inputs": np.asarray(x).tolist()}).encode(), key)


# -- policy validation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, where", [
    ({"tiers": {"a": {"rate": {"per_second": -1}}}}, "tiers.a.rate.per_second"),
    ({"tiers": {"a": {"rate": {"budget": 1.5}}}}, "tiers.a.rate.budget"),
    ({"tiers": {"a": {"extraction": {"action": "explode"}}}}, "tiers.a.extraction.action"),
    ({"tiers": {"a": {"extraction": {"stateful_quantile": 0.9}}}}, "tiers.a.extraction.stateful_quantile"),
    ({"tiers": {"a": {"extraction": {"stateful_k": 0}}}}, "tiers.a.extraction.stateful_k"),
    ({"tiers": {"a": {"output": "shuffle"}}}, "tiers.a.output"),
    ({"tiers": {"a": {"inputs": {"max_batsh": 3}}}}, "tiers.a.inputs.max_batsh"),
    ({"tiers": {"a": {}}, "keys": [{"id": "x", "sha256": "00", "tier": "a"}]}, "keys[0].sha256"),
    ({"tiers": {"a": {}}, "keys": [{"id": "x", "sha256": "0" * 64, "tier": "b"}]}, "keys[0].tier"),
    ({"tiers": {"a": {}}, "default_tier": "b"}, "default_tier"),
    ({"tiers": {}}, "tiers"),
])
def test_policy_errors_name_the_key(raw, where):
    with pytest.raises(ParameterError) as caught:
        parse_policy(raw)
    message = str(caught.value)
    assert where in message and "\n" not in message


def test_policy_file_errors(tmp_path):
    from bastion.guard.guard_policy import load_policy

    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [unclosed")
    with pytest.raises(ParameterError, match="not valid YAML"):
        load_policy(bad)
    good = tmp_path / "good.yaml"
    good.write_text("tiers:\n  default:\n    rate: {per_second: 5, burst: 10}\n")
    assert load_policy(good).resolve(None)[1].rate.per_second == 5.0


def test_token_bucket_refills():
    from bastion.guard.rules import TokenBucket

    bucket = TokenBucket(rate=2.0, burst=4.0, stamp=0.0)
    assert bucket.take(4, now=0.0) == 0.0
    assert bucket.take(1, now=0.0) == pytest.approx(0.5)
    assert bucket.take(1, now=0.5) == 0.0


def test_prada_alarm_on_a_synthetic_extraction_stream(digits_demo):
    """Jacobian-style stream (seeds, then small sign steps from earlier queries) is flagged; a replay of the test
    data is not."""
    from bastion.guard.guard_policy import ExtractionRules
    from bastion.guard.rules import ExtractionMonitor

    rules = ExtractionRules(prada_delta=0.96, prada_min_queries=100)
    rng = np.random.default_rng(0)
    seeds = digits_demo.test.x[:10].reshape(10, -1)
    stream = [seeds]
    while sum(len(s) for s in stream) < 600:
        base = np.concatenate(stream)[-len(seeds) * 4:]
        stream.append(np.clip(base + 0.1 * rng.choice([-1, 1], size=base.shape), 0, 1))
    synthetic = np.concatenate(stream)[:600].astype(np.float32)
    labels = rng.integers(0, 10, len(synthetic))
    attacked = ExtractionMonitor(rules, None)
    flagged = [attacked.observe(synthetic[i:i + 20], labels[i:i + 20]) for i in range(0, 600, 20)]
    assert any("extraction.prada" in f for f in flagged) and attacked.flagged_at <= 600
    benign = ExtractionMonitor(rules, None)
    x, y = digits_demo.test.x.reshape(len(digits_demo.test.x), -1), digits_demo.test.y
    assert not any(benign.observe(x[i:i + 20], y[i:i + 20]) for i in range(0, min(len(x), 600), 20))


# -- the server ---------------------------------------------------------------------------------------------------
def test_protocol_and_endpoints(guard_url, digits_demo):
    from bastion.models.http_backend import load_http

    url, _, _ = guard_url
    target = load_http(url + "/predict")  # Bastion's own client reads and validates the guard's answers
    x = digits_demo.test.x[:16]
    assert (target.labels(x).numpy() == digits_demo.test.y[:16]).mean() > 0.8
    assert _call(url, path="/healthz")[1]["status"] == "ok"
    spec = _call(url, path="/openapi.json")[1]
    assert spec["openapi"].startswith("3.") and "post" in spec["paths"]["/predict"]
    text = _call(url, path="/metrics")[1]["text"]
    assert "guard_requests_total" in text and "guard_latency_seconds_bucket" in text


@pytest.mark.parametrize("body, status", [
    (b"not json", 400),
    (b'{"x": 1}', 400),
    (b'{"inputs": [[[[NaN]]]]}', 422),
    (b'{"inputs": "abc"}', 422),
    (b'{"inputs": [[1, [2]]]}', 422),
    (b'{"inputs": []}', 422),
    (b"[" * 100_000, 400),
])
def test_hostile_bodies_are_4xx(guard_url, body, status):
    assert _call(guard_url[0], body)[0] == status


def test_input_rules(guard_url, digits_demo):
    url = guard_url[0]
    x = digits_demo.test.x[:2]
    assert _post(url, x)[0] == 200
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    assert _call(url, json.dumps({"inputs": nan.tolist()}).encode())[0] == 422
    assert _post(url, x + 2)[1]["error"].startswith("inputs must lie in")  # range
    assert _post(url, x[:, :, :4])[0] == 422  # shape
    assert _post(url, np.zeros((65, 1, 8, 8)))[0] == 413  # batch size
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=30)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Length", "600000")  # declared beyond max_body_bytes: refused before reading
    conn.endheaders(b'{"inputs": [')
    assert conn.getresponse().status == 413
    conn.close()
    assert _post(url, x, key="nobody")[0] == 401


def test_rate_limit_and_budget(guard_url, digits_demo):
    url, x = guard_url[0], digits_demo.test.x
    assert _post(url, x[:5], key="limited")[0] == 200
    status, answer, headers = _post(url, x[:1], key="limited")
    assert status == 429 and "retry-after" in {k.lower() for k in headers}
    assert _post(url, x[:10], key="budget")[0] == 200
    assert _post(url, x[:1], key="budget")[1]["error"].startswith("query budget of 10 spent")


def test_output_hardening(guard_url, digits_demo):
    url, x = guard_url[0], digits_demo.test.x[:4]
    assert _call(url, key="labels")[1]["output"] == "labels"
    labels = _post(url, x, key="labels")[1]["labels"]
    assert labels == np.argmax(_post(url, x)[1]["probabilities"], 1).tolist()
    rounded = np.asarray(_post(url, x, key="rounded")[1]["probabilities"])
    assert np.allclose(rounded, np.round(rounded, 1))


def test_extraction_monitor_blocks_and_throttles(guard_url, digits_demo):
    url = guard_url[0]
    rng = np.random.default_rng(1)
    seeds = digits_demo.test.x[:10]
    blocked_at = None
    queries = seeds
    for sent in range(0, 800, 20):
        status, answer, _ = _post(url, queries[:20], key="watched")
        if status == 403:
            blocked_at = sent
            break
        queries = np.clip(np.concatenate([queries[20:], queries[:20] + 0.1 * rng.choice([-1, 1], (20, 1, 8, 8))]),
                          0, 1) if len(queries) > 20 else np.clip(
            np.concatenate([queries, queries + 0.1 * rng.choice([-1, 1], queries.shape)]), 0, 1)
    assert blocked_at is not None and blocked_at <= 800
    noise = rng.random((20, 1, 8, 8)).astype(np.float32)  # far from the data: the distribution detector
    statuses = [_post(url, noise, key="ood")[0] for _ in range(4)]
    assert statuses[:2] == [200, 200] and 429 in statuses
    assert _call(url, key="ood")[0] == 200  # GET still answers (described), only predictions are throttled
    honest = np.asarray(_post(url, noise)[1]["probabilities"])
    answers = [np.asarray(_post(url, noise, key="degraded")[1]["probabilities"]) for _ in range(3)]
    assert np.allclose(answers[0], honest, atol=1e-5)  # below ood_min_queries: not flagged yet
    assert not np.allclose(answers[-1], honest, atol=0.05)  # flagged: MAD-poisoned answers from then on


def test_detectors_reject_suspicious_inputs(guard_url, digits_demo):
    """Most clean inputs pass; the inputs whose squeezing score or STRIP entropy crosses the calibrated threshold
    (the most extreme of the test set under the guard's own detectors) are refused with 422."""
    url, _, guard = guard_url
    clean = [_post(url, digits_demo.test.x[i:i + 1], key="screened")[0] for i in range(10)]
    assert clean.count(200) >= 8
    x = digits_demo.test.x[:300]
    for name, setting, sign in (("squeeze", 4, -1), ("strip", 8, 1)):  # high squeeze scores, low STRIP entropy
        score = getattr(guard.detectors, name)
        extreme = x[np.argsort(sign * score(x, setting))[:20]]
        # rescored alone, as the guard scores a one-input request (STRIP's overlays depend on the batch)
        alone = np.array([score(extreme[i:i + 1], setting)[0] for i in range(len(extreme))])
        status, answer, _ = _post(url, extreme[np.argmin(sign * alone)][None], key="screened")
        assert status == 422 and "rejected by" in answer["error"]


def test_audit_log_records_every_request(guard_url):
    from bastion.guard.audit_log import read_log

    url, path, guard = guard_url
    _post(url, np.zeros((1, 1, 8, 8)))
    entries = read_log(path)
    assert entries and {e.verdict for e in entries} >= {"allow", "deny"}
    assert all(e.inputs is None for e in entries)  # raw inputs only with --log-inputs
    assert any("rate.limit" in e.rules for e in read_log(path, key="limited"))


def test_fuzz_never_5xx(guard_url):
    """Property-based fuzz of the POST body against the OpenAPI schema's shape: no 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    url = guard_url[0]
    number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30), st.booleans(),
                       st.none(), st.text(max_size=3))
    nested = st.recursive(number, lambda inner: st.lists(inner, max_size=9), max_leaves=80)
    bodies = st.one_of(st.fixed_dictionaries({"inputs": nested}), nested,
                       st.dictionaries(st.text(max_size=5), nested, max_size=3))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bodies)
    def check(body):
        raw = json.dumps(body, allow_nan=True).encode()
        assert _call(url, raw)[0] < 500

    check()


def test_incremental_prada_matches_the_detector():
    """The guard's per-query PRADA records the same distances as the batch detector on one stream."""

    from bastion.defenses.detect.prada import PRADA
    from bastion.guard.rules import IncrementalPRADA

    rng = np.random.default_rng(0)
    x, y = rng.random((300, 16)).astype(np.float32), rng.integers(0, 5, 300)
    incremental = IncrementalPRADA(0.96, 100, 10_000)
    got = [incremental.add(row.astype(np.float64), int(c)) for row, c in zip(x, y, strict=True)]
    got = np.array([np.nan if d is None else d for d in got])
    np.testing.assert_allclose(got, PRADA(0.96, 100).distances(x, y), atol=1e-4)
    ring = _ring_after(6, size=4)
    assert sorted(ring.rows[:, 0].tolist()) == [2.0, 3.0, 4.0, 5.0] and ring.nearest(np.zeros(2)) == 2.0


def _ring_after(n: int, size: int):
    from bastion.guard.rules import _Ring

    ring = _Ring(np.zeros(2), size)
    for i in range(1, n):
        ring.append(np.array([float(i), 0.0]))
    return ring


def test_reference_distances_match_cdist(digits_demo):
    import torch

    from bastion.guard.rules import Reference

    reference = Reference(digits_demo.train)
    x = np.asarray(digits_demo.test.x[:50], dtype=np.float32)
    exact = torch.cdist(torch.as_tensor(x).reshape(50, -1), reference.index).min(dim=1).values.numpy()
    np.testing.assert_allclose(reference.nearest(x), exact, atol=1e-4)


def test_monitors_run_on_gathered_queries_and_apply_from_the_next_request(digits_demo):
    """The extraction monitors run once `monitor_batch` answered queries are queued (after the answer); their hits
    and action are handed to the key's next request."""
    from bastion.guard.rules import KeyState, Reference, Refused

    tier = parse_policy({"tiers": {"t": {"extraction": {"ood_share": 0.3, "ood_min_queries": 40,
                                                        "monitor_batch": 40, "action": "block"}}}}).tiers["t"]
    state = KeyState(tier, Reference(digits_demo.train))
    noise = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    assert not state.gather(noise, np.zeros(20, int))  # 20 queued: not due
    assert state.settle() == [] and not state.blocked
    assert state.gather(noise + 0.01, np.zeros(20, int))  # 40 queued: due
    state.run_monitors()  # what the background task does after the answer
    assert state.blocked and state.pending_n == 0
    assert state.settle() == ["extraction.distribution", "extraction.block"]  # logged with the next request
    with pytest.raises(Refused):
        state.admit(1)
    assert state.settle() == []
