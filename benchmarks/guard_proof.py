"""Proof by attack through a live guard: Bastion's own attacks against the demo digits CNN served unguarded and
guarded, side by side.

    OMP_NUM_THREADS=1 python benchmarks/guard_proof.py [--out guard-proof] [--budget 1000] [--skip evasion,privacy]

Two `bastion guard serve` processes on free loopback ports serve the same model file (`digits-cnn.pt2`, prepared
by `bastion demo`; the sandboxed worker): `open` with no policy (input checks only), `guarded` with `guard.yaml`
(written to --out): extraction monitors (PRADA, Juuti et al. EuroS&P 2019; the query-distribution detector; the
stateful query detector, Chen, Carlini & Wagner AsiaCCS-SPAI 2020) with
`action: degrade` (MAD poisoning, Orekondy et al. ICLR 2020), output rounding to 2 decimals, input range checks,
and on the `screened` tier feature squeezing (Xu et al., NDSS 2018) rejecting suspected adversarial inputs. Each
attack gets its own API key, so each stream is its own. Runs, all through the HTTP protocol:

- `jacobian`: `bastion assess URL --plan` (extraction only, Jacobian augmentation, Papernot et al. AsiaCCS 2017,
  budgets 100/270, its seed set half the test digits), then `bastion report compare` of the two runs;
- `knockoff-ood`: `bastion attack extraction knockoff URL --pool photos.npz` (Knockoff Nets, Orekondy et al. CVPR
  2019, random sampling) with the paper's kind of pool: natural images from another distribution, here 8x8
  grey-scale patches of the two photographs scikit-learn ships (`guard_knockoff.natural_pool`);
- `knockoff-adaptive`: an attacker who knows the public rule (flag when over 30% of a key's queries lie far from
  the training data) and keeps under it: its pool mixes the photographs with natural digits at 1:3;
- `jacobian-adaptive`: Jacobian with steps λ = 0.3 and 0.5 and no sign flips (tau 100), an attacker who knows the
  stateful rule (Chen, Carlini & Wagner 2020: a key flagged once 10 of its last 1,000 queries lie closer to an
  earlier query than 99.9% of natural traffic does) and steps farther than natural neighbours lie;
- `replay`: the 540 test digits in 10 random orders, one key each, batches of 20 (the monitors' false alarms); the
  training digits the server's reference index holds (the half its thresholds were not calibrated on); and the
  test digits once one by one on the `screened` tier (feature squeezing's false rejects);
- `evasion` (Square Attack, scores only) and `privacy` (loss threshold membership inference): `bastion assess`
  with those families on the `hardened` key (rounding:2 only), then `bastion report compare`.

`--lm MODEL` (a .gguf, a Hugging Face folder, `gemma` for Gemma 3 270M or `tiny` for a TinyLM trained into --out)
runs the availability comparison instead: one `bastion guard serve MODEL` with an open tier (`max_new_tokens:
256`, the unguarded baseline) and a guarded key (`max_new_tokens: 32`, `token_budget`), and Bastion's `overgen`
attack (over-generation prompts, Engorgio's baselines, Dong et al. 2024) through each; the guarded attacker first
asks for 256 tokens (refused: 400), then, knowing the public ceiling, for 32.

When each guarded key was first flagged comes from the guard's audit log (`bastion guard log --key`), counted in
inputs the key sent (including the attack's own evaluation queries, which go through the same key). Prints a
Markdown table; the servers are stopped with SIGTERM (drain) at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPLAYS = 10
ADAPTIVE_STEPS = (0.3, 0.5)  # Jacobian's λ for an attacker who knows the stateful rule (tau 100: no sign flips)
KEYS = {"jacobian": "extraction", "jacobian-1000": "extraction", "knockoff-ood": "extraction",
        "knockoff-adaptive": "extraction", **{f"replay-{i}": "extraction" for i in range(REPLAYS)},
        "replay-reference": "extraction", **{f"jacobian-step-{s}": "extraction" for s in ADAPTIVE_STEPS},
        "replay-screened": "screened", "hardened": "hardened"}
EXTRACTION = {"prada_delta": 0.96, "prada_min_queries": 100, "ood_share": 0.3, "ood_quantile": 0.99,
              "ood_min_queries": 50, "window": 2000, "stateful_quantile": 0.001, "stateful_k": 1,
              "stateful_hits": 10, "stateful_buffer": 1000, "monitor_batch": 16, "action": "degrade",
              "degrade_output": "poisoning:1.0"}
MONITORS = ("extraction.prada", "extraction.distribution", "extraction.stateful")
DETECTORS = {"squeeze_fpr": 0.05, "squeeze_bits": 4, "action": "reject"}
ARCH = "bastion.demo.models:digits_cnn"


def secret(name: str) -> str:
    return f"proof-{name}"


def policy() -> dict:
    """The guarded server's policy: one tier per role, one key per attack."""
    inputs = {"check_range": True}
    return {"default_tier": None,
            "tiers": {"extraction": {"inputs": dict(inputs), "extraction": EXTRACTION, "output": "rounding:2"},
                      "screened": {"inputs": dict(inputs), "detectors": DETECTORS, "output": "rounding:2"},
                      "hardened": {"inputs": dict(inputs), "output": "rounding:2"}},
            "keys": [{"id": k, "sha256": hashlib.sha256(secret(k).encode()).hexdigest(), "tier": t}
                     for k, t in KEYS.items()]}


def bastion() -> list[str]:
    exe = Path(sys.executable).with_name("bastion")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from bastion.cli.main import run; run()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, out: Path, name: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (out / f"{name}-server.log").open("w")
    proc = subprocess.Popen([*bastion(), "guard", "serve", str(model), "--port", str(port),
                             "--audit", str(out / f"{name}.sqlite"), *extra], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the {name} server exited: see {out / f'{name}-server.log'}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return proc, url + "/predict"
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the {name} server did not start within 180 s")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def cli(args: list[str], out: Path, name: str) -> tuple[int, str]:
    """Run one `bastion` command; its stdout, and stderr kept in --out."""
    start = time.time()
    done = subprocess.run([*bastion(), *args], capture_output=True, text=True)
    (out / f"{name}.stderr").write_text(done.stderr)
    print(f"  {name}: exit {done.returncode} in {time.time() - start:.0f} s", file=sys.stderr)
    return done.returncode, done.stdout


def keyed(url: str, key: str) -> str:
    return f"{url}?api_key={secret(key)}"


def first_flag(audit: Path, key: str) -> tuple[int | None, str, int, int]:
    """(inputs the key had sent when first flagged, by which rules, inputs answered, inputs refused) from the log."""
    from bastion.guard.audit_log import read_log

    sent, at, why, answered, refused = 0, None, "", 0, 0
    for e in read_log(audit, key):
        sent += e.n_inputs
        answered += e.n_inputs if e.status == 200 else 0
        refused += e.n_inputs if e.status != 200 else 0
        hits = [r for r in e.rules if r.startswith(MONITORS)]
        if at is None and hits:
            at, why = sent, ",".join(sorted({h.split(".")[1] for h in hits}))
    return at, why, answered, refused


def write_data(out: Path, demo) -> dict[str, Path]:
    """The attack data: evaluation digits, the photograph pool, the adaptive mixed pool, the plans."""
    sys.path.insert(0, str(Path(__file__).parent))
    from guard_knockoff import natural_pool

    x, y = np.asarray(demo.test.x, np.float32), np.asarray(demo.test.y)
    half = np.random.default_rng(0).permutation(len(x))
    evaluation, rest = half[: len(x) // 2], half[len(x) // 2:]
    photos = natural_pool(2000, seed=0)
    mixed_photos = natural_pool(len(rest) // 3, seed=1)
    paths = {"eval": out / "eval.npz", "photos": out / "photos.npz", "mixed": out / "mixed.npz",
             "seeds": out / "seeds.npz"}
    np.savez(paths["eval"], x=x[evaluation], y=y[evaluation])
    np.savez(paths["seeds"], x=x[rest], y=y[rest])
    np.savez(paths["photos"], x=photos, y=np.zeros(len(photos), np.int64))  # labels unused: the victim labels
    mixed = np.concatenate([x[rest], mixed_photos])
    np.savez(paths["mixed"], x=mixed, y=np.zeros(len(mixed), np.int64))
    plans = {
        "plan-jacobian": {"families": {"extraction": {"budgets": [100, 270], "pool_fraction": 0.5,
                                                      "attacks": {"jacobian": {"ood_samples": 0, "arch": ARCH}}},
                                       **{f: {"enabled": False} for f in ("evasion", "privacy", "backdoor",
                                                                          "supply_chain", "availability")}}},
        "plan-evasion": {"families": {"evasion": {"n_samples": 100, "eps": [0.1, 0.2],
                                                  "attacks": {"square": {"queries": 300}}},
                                      "privacy": {"n_members": 200, "n_nonmembers": 200, "attacks": {"loss": {}}},
                                      **{f: {"enabled": False} for f in ("extraction", "backdoor",
                                                                         "supply_chain", "availability")}}},
    }
    import yaml

    for name, plan in plans.items():
        paths[name] = out / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump({"version": 1, "seed": 0, "device": "cpu", **plan}))
    return paths


def knockoff(url: str, data: Path, pool: Path, budgets: str, out: Path, name: str) -> dict:
    return attack("knockoff", url, data, pool, budgets, out, name)


def attack(which: str, url: str, data: Path, pool: Path, budgets: str, out: Path, name: str,
           params: tuple[str, ...] = ()) -> dict:
    """`bastion attack extraction WHICH URL --pool POOL [params]`: its fidelity per budget, status and reason."""
    extra = (["--arch", ARCH] if which == "jacobian" else []) + list(params)
    code, stdout = cli(["attack", "extraction", which, url, *extra, "--data", str(data), "--pool", str(pool),
                        "--budget", budgets, "--ood-samples", "0", "--transfer-samples", "0",
                        "--seed", "0", "--json"], out, name)
    if code not in (0, 1):
        return {"error": (out / f"{name}.stderr").read_text().strip().splitlines()[-1:]}
    found = json.loads(stdout)
    result = found.get("result", found)
    return {"fidelity": result["metrics"].get("fidelity"), "status": result.get("status"),
            "reason": result.get("reason")}


def replay(url: str, test_x: np.ndarray, seed: int, batch: int = 20) -> None:
    from bastion.models.http_backend import EndpointRefused, HttpClient

    client = HttpClient()
    order = np.random.default_rng(seed).permutation(len(test_x))
    for i in range(0, len(order), batch):
        with contextlib.suppress(EndpointRefused):  # a false reject (422 from squeezing): counted from the log
            client.post(url, {"inputs": test_x[order[i:i + batch]].tolist()})


def compare(store: Path, out: Path, name: str) -> dict:
    code, stdout = cli(["report", "compare", "last~", "last", "--store", str(store), "--json"], out, name)
    (out / f"{name}.json").write_text(stdout)
    code_md, text = cli(["report", "compare", "last~", "last", "--store", str(store)], out, name + "-md")
    (out / f"{name}.md").write_text(text)
    return json.loads(stdout) if code == 0 and stdout.strip() else {}


def assess(url: str, paths: dict, plan: str, store: Path, out: Path, name: str, train: bool) -> int:
    args = ["assess", url, "--data", str(paths["test"]), "--plan", str(paths[plan]), "--store", str(store),
            "--out", str(out / name), "--format", "json,md", "--quiet", "--seed", "0"]
    if train:
        args += ["--train-data", str(paths["train"])]
    return cli(args, out, name)[0]


NATURAL_PROMPTS = ["What is the capital of France?", "Name three colours.", "What is 2 + 2?",
                   "Say hello in Spanish."]
LM_POLICY = {"default_tier": "open",
             "tiers": {"open": {"llm": {"max_new_tokens": 256}},
                       "guarded": {"llm": {"max_new_tokens": 32, "token_budget": 20000}}},
             "keys": [{"id": "guarded", "sha256": hashlib.sha256(secret("guarded").encode()).hexdigest(),
                       "tier": "guarded"}]}


def lm_availability(spec: str, out: Path) -> None:
    """Over-generation through an LM guard: generated tokens per request, open tier vs guarded key."""
    import yaml

    from bastion.attacks.availability.lm import Overgen
    from bastion.core.errors import BastionError
    from bastion.lm import open_lm

    if spec == "gemma":
        from bastion.lm import gemma_path

        spec = str(gemma_path())
    elif spec == "tiny":
        from bastion.lm.tiny import TinyLM

        TinyLM(epochs=20, block=128, seed=0).train([f"<user>\n{p}\n<assistant>\nOK.\n" for p in NATURAL_PROMPTS]
                                                   * 8, out / "tiny-lm")
        spec = str(out / "tiny-lm")
    (out / "guard-llm.yaml").write_text(yaml.safe_dump(LM_POLICY, sort_keys=False))
    proc, url = start_server(Path(spec), out, "lm", ["--policy", str(out / "guard-llm.yaml"), "--no-sandbox"])
    base = url.removesuffix("/predict") + "/v1"
    os.environ["BASTION_PROOF_KEY"] = secret("guarded")
    rows = []
    try:
        for who, ask in (("open tier (ceiling 256)", 256), ("guarded key, asks 256", 256),
                         ("guarded key, asks the public ceiling 32", 32)):
            key = None if who.startswith("open") else "BASTION_PROOF_KEY"
            start = time.time()
            try:
                result = Overgen(placement="alone", max_new_tokens=ask, n_bootstrap=200).run(
                    open_lm(base, api_key_env=key, timeout=600), prompts=NATURAL_PROMPTS)
                m = result.metrics
                tokens = result.samples["attack_tokens"]
                rows.append((who, f"{m['mean_tokens']['natural']:.1f}", f"{m['mean_tokens']['attack']:.1f}",
                             f"{max(tokens)}", f"{sum(result.samples['attack_capped'])}/{len(tokens)}",
                             f"{time.time() - start:.0f} s"))
            except BastionError as exc:
                rows.append((who, "—", "—", "—", "—", f"refused: {' '.join(str(exc).split())[:120]}"))
            print(f"  {who}: done", file=sys.stderr)
    finally:
        print(f"server stopped (exit code {stop(proc)})", file=sys.stderr)
    print(f"Over-generation through the guard ({Path(spec).name}, {len(NATURAL_PROMPTS)} natural prompts, "
          f"{len(NATURAL_PROMPTS)} overgen prompts, greedy):\n")
    print("| client | natural tokens/request | attack tokens/request | attack max | attack requests capped | "
          "time |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("guard-proof"))
    parser.add_argument("--budget", type=int, default=1000, help="Knockoff's largest budget (photograph pool)")
    parser.add_argument("--lm", help="run the LM availability comparison on this model instead (gemma, tiny, "
                        "a .gguf or a Hugging Face folder)")
    parser.add_argument("--prada-delta", type=float, default=EXTRACTION["prada_delta"], help="PRADA's threshold")
    parser.add_argument("--skip", default="", help="comma list of runs to skip: jacobian, jacobian-adaptive, "
                        "knockoff, adaptive, replay, evasion")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if args.lm:
        args.out.mkdir(parents=True, exist_ok=True)
        lm_availability(args.lm, args.out.resolve())
        return
    import yaml

    from bastion.demo.cache import demo_model

    demo = demo_model("digits-cnn", progress=False)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = write_data(out, demo)
    paths["train"], paths["test"] = Path(demo.train_path), Path(demo.test_path)
    EXTRACTION["prada_delta"] = args.prada_delta
    (out / "guard.yaml").write_text(yaml.safe_dump(policy(), sort_keys=False))
    open_proc, open_url = start_server(demo.model_path, out, "open", [])
    guard_proc, guard_url = start_server(demo.model_path, out, "guarded",
                                         ["--policy", str(out / "guard.yaml"), "--data", str(paths["train"])])
    rows: list[tuple[str, str, str, str]] = []
    audit = out / "guarded.sqlite"
    try:
        if "jacobian" not in skip:
            store = out / "jacobian-runs.sqlite"
            assess(open_url, paths, "plan-jacobian", store, out, "jacobian-open", False)
            assess(keyed(guard_url, "jacobian"), paths, "plan-jacobian", store, out, "jacobian-guarded", False)
            found = compare(store, out, "jacobian-compare")
            at, why, _, _ = first_flag(audit, "jacobian")
            rows.append(("Jacobian (assess, budgets 100/270)", f"{at} ({why})" if at else "not flagged",
                         *_cells(found, ("extraction",))))
        budgets = ",".join(str(b) for b in sorted({100, 300, args.budget}) if b <= args.budget)
        if "jacobian" not in skip:
            before = attack("jacobian", open_url, paths["eval"], paths["seeds"], budgets, out, "jacobian-1000-open")
            after = attack("jacobian", keyed(guard_url, "jacobian-1000"), paths["eval"], paths["seeds"], budgets,
                           out, "jacobian-1000-guarded")
            at, why, _, _ = first_flag(audit, "jacobian-1000")
            rows.append((f"Jacobian, `bastion attack` (budgets {budgets})", f"{at} ({why})" if at else "not flagged",
                         _fid(before), _fid(after)))
        if "jacobian-adaptive" not in skip:  # knows the stateful rule: steps beyond natural nearest-neighbour gaps
            for step in ADAPTIVE_STEPS:
                params = ("--step", str(step), "--tau", "100")
                before = attack("jacobian", open_url, paths["eval"], paths["seeds"], budgets, out,
                                f"jacobian-step-{step}-open", params)
                after = attack("jacobian", keyed(guard_url, f"jacobian-step-{step}"), paths["eval"], paths["seeds"],
                               budgets, out, f"jacobian-step-{step}-guarded", params)
                at, why, _, _ = first_flag(audit, f"jacobian-step-{step}")
                rows.append((f"Jacobian adaptive: λ = {step}, no sign flips (budgets {budgets})",
                             f"{at} ({why})" if at else "not flagged", _fid(before), _fid(after)))
        if "knockoff" not in skip:
            before = knockoff(open_url, paths["eval"], paths["photos"], budgets, out, "knockoff-ood-open")
            after = knockoff(keyed(guard_url, "knockoff-ood"), paths["eval"], paths["photos"], budgets, out,
                             "knockoff-ood-guarded")
            at, why, _, _ = first_flag(audit, "knockoff-ood")
            rows.append((f"Knockoff, photograph pool (budgets {budgets})", f"{at} ({why})" if at else "not flagged",
                         _fid(before), _fid(after)))
        if "adaptive" not in skip:
            mixed = int(np.load(paths["mixed"])["x"].shape[0])
            b = ",".join(str(v) for v in (100, mixed))
            before = knockoff(open_url, paths["eval"], paths["mixed"], b, out, "knockoff-adaptive-open")
            after = knockoff(keyed(guard_url, "knockoff-adaptive"), paths["eval"], paths["mixed"], b, out,
                             "knockoff-adaptive-guarded")
            at, why, _, _ = first_flag(audit, "knockoff-adaptive")
            rows.append((f"Knockoff adaptive: 1/4 photographs, 3/4 digits (budgets {b})",
                         f"{at} ({why})" if at else "not flagged", _fid(before), _fid(after)))
        if "replay" not in skip:
            test_x = np.asarray(demo.test.x, np.float32)
            flagged, rejected, total = 0, 0, 0
            for seed in range(REPLAYS):
                replay(keyed(guard_url, f"replay-{seed}"), test_x, seed)
                at, _, answered, refused = first_flag(audit, f"replay-{seed}")
                flagged += at is not None
                rejected, total = rejected + refused, total + answered + refused
            rows.append((f"replay of the {len(test_x)} test digits ({REPLAYS} orders, batches of 20)",
                         f"{flagged}/{REPLAYS} streams flagged", "—", f"{rejected}/{total} inputs refused"))
            from bastion.guard.rules import Reference

            index = Reference(demo.train).index.numpy().reshape(-1, *test_x.shape[1:])  # the server's own split
            replay(keyed(guard_url, "replay-reference"), index, 0)
            at, why, answered, refused = first_flag(audit, "replay-reference")
            rows.append((f"replay of the {len(index)} training digits the thresholds were not calibrated on",
                         f"{at} ({why})" if at else "not flagged", "—", f"{refused}/{answered + refused} refused"))
            replay(keyed(guard_url, "replay-screened"), test_x, 0, batch=1)
            _, _, answered, refused = first_flag(audit, "replay-screened")
            rows.append((f"replay of the {len(test_x)} test digits one by one, feature squeezing (reject)", "—", "—",
                         f"{refused}/{answered + refused} inputs rejected (false rejects)"))
        if "evasion" not in skip:
            store = out / "evasion-runs.sqlite"
            assess(open_url, paths, "plan-evasion", store, out, "evasion-open", True)
            assess(keyed(guard_url, "hardened"), paths, "plan-evasion", store, out, "evasion-guarded", True)
            found = compare(store, out, "evasion-compare")
            rows.append(("Square (evasion) + loss MIA (privacy), assess; guarded: rounding:2", "—",
                         *_cells(found, ("evasion", "privacy"))))
    finally:
        codes = stop(guard_proc), stop(open_proc)
        print(f"servers stopped (exit codes {codes[0]}, {codes[1]})", file=sys.stderr)
    print("| attack | guarded key first flagged at (inputs sent), by | unguarded | guarded |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n(files in {out}; the guard's log: bastion guard log --audit {audit} --summary)")


def _fid(found: dict) -> str:
    if "error" in found:
        return "error: " + " ".join(found["error"])
    text = " / ".join(f"{row['fidelity']:.3f}" for row in found.get("fidelity") or [])
    return f"fidelity {text}" + (f" (partial: {found['reason']})" if found.get("status") == "partial" else "")


def _cells(found: dict, families: tuple[str, ...]) -> tuple[str, str]:
    """(unguarded, guarded) cells from `bastion report compare --json`: each family's grade and headline metrics."""
    if not found:
        return "no comparison", "no comparison"
    cells = []
    for side in ("before", "after"):
        parts = []
        for family in families:
            grade = next((g[side] for g in found.get("grades", []) if g["family"] == family), "N/A")
            metrics = [f"{m['metric']} {m[side]:.3f}" for m in found.get("metrics", [])
                       if m["family"] == family and isinstance(m.get(side), (int, float))]
            parts.append(f"{family} {grade}: {', '.join(metrics)}")
        cells.append("; ".join(parts))
    return cells[0], cells[1]


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
