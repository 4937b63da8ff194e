"""Budgets keep partial results (issue 21, item 3): a spent query budget or a deadline stops an attack at a natural
boundary, and what it measured comes back marked partial, in the library, through the sandbox and on the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import count
from types import SimpleNamespace

import pytest

import bastion.core.target as target_module
from bastion.attacks.evasion.gradient import FGSM, PGD
from bastion.attacks.extraction import Copycat
from bastion.cli.main import run as cli
from bastion.core.errors import QueryBudgetExceeded
from bastion.models import load_target
from bastion.store import RunStore
from tests.extraction_fixtures import FAST

N = 200  # samples: four batches of 64 (three whole, one of 8) when a budget may stop the run


@pytest.fixture(scope="module")
def digits(digits_demo):
    return digits_demo, digits_demo.test.head(N)


def test_spent_budget_keeps_the_finished_batches(digits):
    demo, data = digits
    full = FGSM(eps=0.1).run(load_target(demo.model_path, device="cpu", max_queries=10**9), data)
    assert full.status == "complete" and full.reason == "" and full.metrics["n_samples"] == N
    budget = full.queries // 2
    part = FGSM(eps=0.1).run(load_target(demo.model_path, device="cpu", max_queries=budget), data)
    done = part.metrics["n_samples"]
    assert part.status == "partial" and "query budget spent" in part.reason
    assert 0 < done < N and done % 64 == 0 and f"{done} of {N} samples attacked" in part.reason
    assert part.queries <= budget
    # FGSM is deterministic: the finished batches hold exactly the outcomes of the complete run on those samples
    assert part.samples["correct"] == full.samples["correct"][:done]
    assert part.samples["robust"] == full.samples["robust"][:done]
    kept = sum(r[0] for r in full.samples["robust"][:done]) / done
    assert part.metrics["robust_accuracy"][0]["robust_accuracy"] == pytest.approx(kept)
    with pytest.raises(QueryBudgetExceeded):  # nothing finished: nothing to report, the one-line error
        FGSM(eps=0.1).run(load_target(demo.model_path, device="cpu", max_queries=10), data)


def test_deadline_stops_pgd_between_batches(digits, monkeypatch):
    demo, data = digits
    target = load_target(demo.model_path, device="cpu")
    clock = count()  # one tick per query batch the target answers
    monkeypatch.setattr(target_module, "time", SimpleNamespace(time=lambda: float(next(clock))))
    target.counter.stop_at(12.0, 30.0)  # PGD-5 answers a batch of 64 in 8 query batches: the second one stops
    result = PGD(eps=0.1, steps=5, seed=0).run(target, data)
    assert result.status == "partial" and result.reason.startswith("deadline reached (30 s)")
    assert result.metrics["n_samples"] == 64 == len(result.samples["correct"])
    assert "64 of 200 samples attacked" in result.reason


def test_extraction_keeps_the_copies_at_the_budget_points_reached(digits):
    demo, _ = digits
    limited = load_target(demo.model_path, device="cpu", max_queries=100)
    result = Copycat(budget=[30, 60, 150], **FAST).run(limited, demo.test, pool=demo.train)
    assert result.status == "partial" and "copies at 2 of 3 budget points (30, 60)" in result.reason
    assert [c["budget"] for c in result.metrics["curve"]] == [30, 60] and result.queries == 60
    assert result.metrics["fidelity"] == [{"budget": 30, "fidelity": result.metrics["curve"][0]["fidelity"]},
                                          {"budget": 60, "fidelity": result.metrics["curve"][1]["fidelity"]}]


def bastion(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True, timeout=300)


def test_cli_prints_partial_first_and_exits_per_fail_on(digits, tmp_path):
    """Sandboxed (the demo model is a .pt2: code runs in the worker, which sends the partial result back) and
    in-process: the same partial result; the first line says so; --fail-on never passes a partial run."""
    demo, _ = digits
    common = ["attack", "evasion", "fgsm", str(demo.model_path), "--data", str(demo.test_path), "--eps", "0.1",
              "--n-samples", str(N), "--device", "cpu", "--max-queries", "300"]
    sandboxed = bastion(*common, "--json")
    assert sandboxed.returncode == 0, sandboxed.stderr
    result = json.loads(sandboxed.stdout)
    assert result["status"] == "partial" and "query budget spent" in result["reason"]
    assert 0 < result["metrics"]["n_samples"] < N and result["metrics"]["sandbox"]["no_sandbox"] is False
    assert "bastion: partial: query budget spent" in sandboxed.stderr
    text = bastion(*common, "--no-sandbox", "--fail-on", "critical")
    assert text.returncode == 1, text.stderr
    assert text.stdout.splitlines()[0].startswith("PARTIAL: query budget spent")
    assert "the run is partial, so it cannot pass" in text.stderr


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_queries_below_one_is_one_line(digits, capsys, value):
    demo, _ = digits
    with pytest.raises(SystemExit) as done:
        cli(["attack", "evasion", "fgsm", str(demo.model_path), "--data", str(demo.test_path),
             f"--max-queries={value}"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err == f"error: --max-queries must be at least 1, got {value}\n"


def test_last_tilde_is_the_run_before_the_last(tmp_path):
    with RunStore(tmp_path / "runs.sqlite") as store:
        for run_id in ("20240101-000000-aaaaaa", "20240102-000000-bbbbbb"):
            store.create_run(run_id, {"model": "m.pt"}, {}, None, "local", 0)
        assert store.resolve("last") == "20240102-000000-bbbbbb"
        assert store.resolve("last~") == store.resolve("last~1") == "20240101-000000-aaaaaa"


def test_membership_scores_in_chunks_and_keeps_them_on_a_spent_budget(digits_demo):
    """LOSS with a budget: the records are scored in chunks of 64 (32 members, 32 non-members); a spent budget
    keeps the chunks scored, whose scores are the complete run's."""
    from bastion.attacks.privacy.loss import LossAttack

    members, nonmembers = digits_demo.train.head(100), digits_demo.test.head(100)
    full = LossAttack(n_bootstrap=20).run(load_target(digits_demo.model_path, device="cpu"), None,
                                          members=members, nonmembers=nonmembers)
    part = LossAttack(n_bootstrap=20).run(load_target(digits_demo.model_path, device="cpu", max_queries=150), None,
                                          members=members, nonmembers=nonmembers)
    assert full.status == "complete" and part.status == "partial" and part.queries <= 150
    assert "query budget spent" in part.reason and "64 of 100 members and 64 of 100 non-members" in part.reason
    assert part.samples["member_scores"] == pytest.approx(full.samples["member_scores"][:64])
    assert part.samples["nonmember_scores"] == pytest.approx(full.samples["nonmember_scores"][:64])
    assert part.metrics["n_members"] == 64 and "threshold_attack" in part.metrics
    limited = LossAttack(n_bootstrap=20).run(load_target(digits_demo.model_path, device="cpu", max_queries=10**6),
                                             None, members=members, nonmembers=nonmembers)
    assert limited.status == "complete" and limited.metrics["auc"] == pytest.approx(full.metrics["auc"])
    assert limited.metrics["threshold_attack"] == pytest.approx(full.metrics["threshold_attack"])


def test_a_deadline_stops_a_poisoning_sweep_between_rates():
    """The sweep checks the deadline between poison rates: what it trained (clean and 2%) comes back partial."""
    from bastion.attacks.backdoor.badnets import BadNets
    from bastion.demo.models import digits_cnn
    from tests.poisoning_fixtures import digits, target_of

    train, _, test = digits()
    target = target_of(digits_cnn())
    target.counter.stop_at(0.0, 1.0)  # long past: the first check after a measured rate stops the sweep
    result = BadNets(poison_rate="0.02,0.1", epochs=1).run(target, test, train_data=train.subset(slice(0, 300)))
    assert result.status == "partial" and "1 of 2 poison rates trained" in result.reason
    assert [p["poison_rate"] for p in result.metrics["curve"]] == [0.02]


def test_shards_merge_from_per_sample_outcomes():
    """merge_shards counts accuracy and attack success over every sample of every shard, carries the pooled
    outcomes, and stays partial when a shard was stopped."""
    from bastion.core.results import Result
    from bastion.families.evasion import merge_shards

    def shard(correct, robust, status="complete"):
        n, clean = len(correct), sum(correct) / len(correct)
        curve = [{"eps": e, "robust_accuracy": sum(r[k] for r in robust) / n} for k, e in enumerate((0.1, 0.2))]
        return Result(family="evasion", attack="pgd", metrics={"n_samples": n, "clean_accuracy": clean,
                                                               "robust_accuracy": curve, "norm": "linf"},
                      samples={"eps": [0.1, 0.2], "correct": correct, "robust": robust}, status=status,
                      reason="query budget spent" if status == "partial" else "")

    a = shard([True, True, True, False], [[True, False], [True, True], [False, False], [False, False]])
    b = shard([False, True], [[False, False], [False, False]], status="partial")
    merged = merge_shards("pgd", [a, b])
    assert merged.metrics["clean_accuracy"] == pytest.approx(4 / 6)
    assert [c["robust_accuracy"] for c in merged.metrics["robust_accuracy"]] == pytest.approx([2 / 6, 1 / 6])
    assert [r["rate"] for r in merged.metrics["attack_success_rate"]] == pytest.approx([2 / 4, 3 / 4])
    assert len(merged.samples["correct"]) == 6 and merged.status == "partial"


def test_assess_max_queries_keeps_a_partial_family_that_resume_completes(cancer_demo, tmp_path, capsys):
    """`bastion assess --max-queries N` (sandboxed): the evasion job stops at its budget, the family is partial
    and graded incomplete, the run is stored, and `--resume` (no budget) completes it."""
    import yaml

    from bastion.families import registry

    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"families": {
        "evasion": {"n_samples": 100, "eps": [0.5], "shards": 1, "sanity": False, "attacks": {"fgsm": {}}},
        **{name: {"enabled": False} for name in registry() if name != "evasion"}}}))
    store = str(tmp_path / "runs.sqlite")

    def assess(*args: str) -> tuple[int, dict]:
        out = tmp_path / f"report{len(list(tmp_path.iterdir()))}"
        with pytest.raises(SystemExit) as done:
            cli(["assess", *args, "--store", store, "--quiet", "--format", "json", "--out", str(out)])
        capsys.readouterr()
        report = json.loads((out / "report.json").read_text())
        return done.value.code, next(f for f in report["families"] if f["family"] == "evasion")

    code, family = assess(str(cancer_demo.model_path), "--data", str(cancer_demo.test_path), "--arch",
                          cancer_demo.arch, "--plan", str(plan), "--max-queries", "220", "--fail-on", "critical")
    (result,) = family["results"]
    assert code == 1 and family["status"] == "partial" and family["grade"] == "incomplete"
    assert result["status"] == "partial" and result["metrics"]["n_samples"] == 64 and result["queries"] <= 220
    with RunStore(tmp_path / "runs.sqlite") as runs:  # stored: the partial job, with what it measured
        (stored,) = runs.outcomes("last", json.loads).values()
        assert stored["status"] == "partial" and stored["result"]["metrics"]["n_samples"] == 64
    code, family = assess("--resume", "last")
    (result,) = family["results"]
    assert code == 0 and family["status"] == "assessed" and family["grade"] != "incomplete"
    assert result["status"] == "complete" and result["metrics"]["n_samples"] == 100


def test_assess_resume_continues_lira_from_its_stored_reference_models(cancer_demo, tmp_path, capsys):
    """`bastion assess --max-queries N` (sandboxed) stops LiRA after its reference models are trained: they are
    kept in the run store's folder (an .npz of arrays), and `--resume` loads them instead of training again and
    asks the target only for the candidates not yet scored; the folder is emptied when the job completes."""
    import yaml

    from bastion.families import registry

    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"families": {
        "privacy": {"n_members": 48, "n_nonmembers": 48,
                    "attacks": {"lira": {"n_reference": 4, "epochs": 2, "n_bootstrap": 20}}},
        **{name: {"enabled": False} for name in registry() if name != "privacy"}}}))
    store = tmp_path / "runs.sqlite"

    def assess(*args: str) -> dict:
        out = tmp_path / f"report{len(list(tmp_path.iterdir()))}"
        with pytest.raises(SystemExit):
            cli(["assess", *args, "--store", str(store), "--quiet", "--format", "json", "--out", str(out)])
        capsys.readouterr()
        report = json.loads((out / "report.json").read_text())
        family = next(f for f in report["families"] if f["family"] == "privacy")
        return next(r for r in family["results"] if r["attack"] == "lira")

    part = assess(str(cancer_demo.model_path), "--data", str(cancer_demo.test_path), "--train-data",
                  str(cancer_demo.train_path), "--arch", cancer_demo.arch, "--plan", str(plan), "--max-queries", "70")
    assert part["status"] == "partial" and "kept for --resume" in part["reason"] and part["queries"] == 64
    with RunStore(store) as runs:
        folder = runs.checkpoint_folder(runs.resolve("last"))
    (saved,) = folder.glob("lira-*.npz")
    done = assess("--resume", "last")
    assert done["status"] == "complete" and done["metrics"]["resumed_from_checkpoint"] is True
    assert done["queries"] == 32 and done["metrics"]["n_members"] == 48  # only the 32 candidates left were asked
    assert not folder.exists()
