"""Attacks through a live guard: a refusal (429 budget, 403 block, 429 throttle) stops an attack as a partial
result with the server's reason, never a traceback (bastion.models.http_backend.EndpointRefused)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bastion.core.data import Dataset
from bastion.core.errors import BudgetSpent
from bastion.models.http_backend import EndpointRefused, HttpClient, load_http
from tests.guard_fixtures import digits_guard, keys_for

POLICY = {
    "default_tier": "open",
    "tiers": {
        "open": {},
        "budget": {"rate": {"budget": 120}},
        "blocked": {"extraction": {"ood_share": 0.3, "ood_min_queries": 20, "action": "block"}},
        "slow": {"rate": {"per_second": 4, "burst": 2}},
    },
    "keys": keys_for(("budget", "blocked", "slow")),
}


@pytest.fixture(scope="module")
def guard_url(digits_demo, tmp_path_factory):
    with digits_guard(digits_demo, POLICY, tmp_path_factory.mktemp("guard-proof")) as (url, _, _):
        yield f"{url}/predict"


def _knockoff(url: str, data: Dataset, pool: Dataset, budgets: list[int]):
    from bastion.attacks.extraction.knockoff import KnockoffNets

    attack = KnockoffNets(budget=budgets, epochs=2, min_steps=5, ood_samples=0, transfer_samples=0, monitor=False)
    return attack.run(load_http(url), data, pool=pool)


def test_spent_budget_is_a_partial_result_with_the_reason(guard_url, digits_demo):
    data = Dataset(digits_demo.test.x[:40], digits_demo.test.y[:40])
    pool = Dataset(digits_demo.test.x[40:240], digits_demo.test.y[40:240])
    result = _knockoff(f"{guard_url}?api_key=secret-budget", data, pool, [40, 200])
    assert result.status == "partial"
    assert "HTTP 429" in result.reason and "query budget of 120 spent" in result.reason
    assert "secret-budget" not in result.reason and "api_key=***" in result.reason
    assert [row["budget"] for row in result.metrics["curve"]] == [40]  # the copy made before the refusal is kept
    unguarded = _knockoff(guard_url, data, pool, [40, 200])  # the same attack without a key's rules completes
    assert unguarded.status == "complete" and len(unguarded.metrics["curve"]) == 2


def test_block_is_a_refusal_not_a_crash(guard_url, digits_demo):
    target = load_http(f"{guard_url}?api_key=secret-blocked")
    noise = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    with pytest.raises(EndpointRefused) as caught:
        for i in range(0, 200, 20):  # far from the digits: the distribution monitor flags it, then blocks
            target.probabilities(np.roll(noise, i, axis=0)[:20])
    assert caught.value.status == 403 and isinstance(caught.value, BudgetSpent)
    assert "look like model extraction" in str(caught.value)


def test_throttle_waits_as_asked_then_refuses(guard_url, digits_demo):
    x = np.asarray(digits_demo.test.x[:2], dtype=np.float32)
    client = HttpClient(retries=1, max_wait_s=1.0)
    target = load_http(f"{guard_url}?api_key=secret-slow", client=client)
    target.probabilities(x)
    start = time.monotonic()
    target.probabilities(x)  # the bucket is empty: 429 with Retry-After 1 s, waited, then answered
    assert time.monotonic() - start >= 0.9
    with pytest.raises(EndpointRefused, match="burst"):
        target.probabilities(np.concatenate([x, x]))  # more than the burst: refused at once, no Retry-After


def test_bastion_attack_reports_a_blocked_run_in_one_line(guard_url, digits_demo, tmp_path, capsys):
    from bastion.cli.main import run

    np.savez(tmp_path / "noise.npz", x=np.random.default_rng(1).random((200, 1, 8, 8), dtype=np.float32),
             y=np.zeros(200, dtype=np.int64))
    np.savez(tmp_path / "data.npz", x=digits_demo.test.x[:30], y=digits_demo.test.y[:30])
    with pytest.raises(SystemExit) as done:
        run(["attack", "extraction", "knockoff", f"{guard_url}?api_key=secret-blocked",
             "--data", str(tmp_path / "data.npz"), "--pool", str(tmp_path / "noise.npz"),
             "--budget", "150", "--epochs", "2", "--ood-samples", "0", "--transfer-samples", "0", "--json"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "HTTP 403" in err and "model extraction" in err


def test_rounded_probabilities_pass_unnormalised_scores_do_not():
    from bastion.core.errors import BastionError
    from bastion.models.http_backend import validate_output

    rounded = [[0.97, 0.01, 0.01, 0.01, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0]]  # sums to 1.01: a guard's rounding:2
    assert validate_output({"probabilities": rounded}, "probabilities", 1, 10, "u").shape == (1, 10)
    rounded[0][0] = 0.99  # 1.03: beyond 0.01, within half a cent per class
    validate_output({"probabilities": rounded}, "probabilities", 1, 10, "u")
    with pytest.raises(BastionError, match="sum to 1"):  # 1.1: not a rounding error
        validate_output({"probabilities": [[0.93, 0.17] + [0.0] * 8]}, "probabilities", 1, 10, "u")
    with pytest.raises(BastionError, match="sum to 1"):  # unrounded scores keep the 0.01 tolerance
        validate_output({"probabilities": [[0.9731, 0.0512] + [0.0] * 8]}, "probabilities", 1, 10, "u")


def test_an_api_key_in_the_url_never_reaches_a_report(guard_url, digits_demo):
    from bastion.families.inputs import Inputs

    url = f"{guard_url}?api_key=secret-budget"
    inputs = Inputs(model=url, data=Dataset(digits_demo.test.x[:10], digits_demo.test.y[:10]))
    shown = [load_http(url).name, inputs.summary()["model"], inputs.describe().path, inputs.describe().name]
    assert all("secret-budget" not in text and "api_key=***" in text for text in shown), shown
