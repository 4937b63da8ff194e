"""Cost of the model sandbox: start-up, the fixed cost of observing the worker, and `bastion attack` sandboxed
against in-process on the evasion benchmark.

    OMP_NUM_THREADS=1 python benchmarks/sandbox_cost.py [--n 540] [--repeats 5] [--startups 10]
        [--sections startup,fixed,cli,library] [--json out.json]

Start-up: from starting bubblewrap (with strace around it) to the worker's interpreter saying `ready`, and on to
the first answer of a job (PyTorch imported in the worker, the model loaded, one forward pass).
Fixed cost: what the worker imports before its job (`jobs.preload("attack")`), timed plainly and under the
sandbox's strace command; strace stops the worker at each traced call (every file it opens), and the number of
traced calls is counted from its log.
CLI (the acceptance measure, issue 13 item 6): `bastion attack evasion pgd|auto MODEL --data TEST --json`, the
sandboxed run against the same command with `--no-sandbox`, alternating, `--repeats` times each; both start from a
fresh interpreter, so both pay for PyTorch once (the sandboxed one in the worker only). Wall-clock medians, and the
machine's busy CPU seconds during each run (/proc/stat: the CLI, strace, bubblewrap and the worker, plus whatever
else runs; meaningful on a quiet machine, so the load average is printed). PGD: L∞ eps 0.1, 20 steps (as in
evasion_peers.py); `auto`: L∞ eps 0.1. Results must be equal.
Library: a caller that has PyTorch imported already runs the attack in-process (load + run) or through
`sandboxed_attack` (a fresh worker, which imports PyTorch itself): the start-up a sandbox adds to a warm process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import table

EPS, STEPS = 0.1, 20
PARAMS = {"pgd": ["--eps", str(EPS), "--steps", str(STEPS), "--step-size", str(2.5 * EPS / STEPS)],
          "auto": ["--eps", str(EPS)]}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy (/proc/stat): a sandboxed worker lives in its own PID namespace
    and is not always reaped by a waiting parent, so RUSAGE_CHILDREN misses it; on a quiet machine this counts
    the whole process tree of a run (the load average is printed beside it)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def startup(model: str, n: int) -> dict[str, float]:
    from bastion.sandbox import Sandbox

    ready, first = [], []
    for _ in range(n):
        start = time.perf_counter()
        sandbox = Sandbox(read_only=[model], job="attack").start()
        ready.append(sandbox.wait_ready())
        list(sandbox.request("probe", load={"path": model, "device": "cpu"}))
        first.append(time.perf_counter() - start)
        sandbox.close()
    return {"ready_s": statistics.median(ready), "first_answer_s": statistics.median(first)}


def fixed_cost(n: int) -> dict[str, float]:
    """The worker's imports before its job, plain and under the sandbox's strace; the traced calls they make."""
    from bastion.sandbox.observe import strace_command

    code = "import bastion.sandbox.jobs as j; j.preload('attack')"
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "trace.log"
        strace = strace_command(log) or []
        runs: dict[str, list[float]] = {"plain": [], "strace": []}
        for _ in range(n):
            for kind, prefix in (("plain", []), ("strace", strace)):
                start = time.perf_counter()
                subprocess.run([*prefix, sys.executable, "-c", code], check=True)
                runs[kind].append(time.perf_counter() - start)
        calls = sum(1 for _ in log.open(errors="replace")) if log.exists() else 0
    plain, traced = statistics.median(runs["plain"]), statistics.median(runs["strace"])
    return {"preload_plain_s": plain, "preload_strace_s": traced, "traced_calls": calls,
            "ms_per_traced_call": 1000 * (traced - plain) / max(calls, 1)}


def cli(name: str, model: str, data: str, n: int, sandbox: bool) -> tuple[dict, float, float]:
    command = [sys.executable, "-m", "bastion", "attack", "evasion", name, model, "--data", data, "--n-samples",
               str(n), "--device", "cpu", "--json", *PARAMS[name], *([] if sandbox else ["--no-sandbox"])]
    start, cpu = time.perf_counter(), machine_cpu()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    metrics = json.loads(done.stdout)["metrics"]
    metrics.pop("sandbox")
    return metrics, seconds, machine_cpu() - cpu


def library(name: str, model: str, data: str, n: int, sandbox: bool) -> tuple[dict, float, float]:
    from bastion.core.arguments import build_with_datasets, load_data
    from bastion.core.registry import get
    from bastion.models import load_target
    from bastion.sandbox import SandboxOptions
    from bastion.sandbox.cli_jobs import sandboxed_attack
    from bastion.sandbox.spec import JobSpec

    spec = JobSpec("attacks", name, "evasion", PARAMS[name], data=data, n_samples=n)
    wall, cpu = time.perf_counter(), machine_cpu()
    if sandbox:
        result = sandboxed_attack(spec, {"path": model, "device": "cpu"}, SandboxOptions(device="cpu"))
        result.metrics.pop("sandbox")
    else:
        evaluation = load_data(Path(data), None, n)
        attack, _ = build_with_datasets(get("attacks", name, "evasion"), PARAMS[name], {}, None, name)
        result = attack.run(load_target(model, data=evaluation, device="cpu"), evaluation)
    return result.metrics, time.perf_counter() - wall, machine_cpu() - cpu


def compare(name: str, n: int, runs: dict[str, list[tuple[dict, float, float]]]) -> dict:
    same = all(r[0] == runs["in-process"][0][0] for r in runs["in-process"] + runs["sandboxed"])
    wall = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
    used = {k: statistics.median(r[2] for r in v) for k, v in runs.items()}
    return {"attack": name, "n": n, "in-process s": wall["in-process"], "sandboxed s": wall["sandboxed"],
            "wall ratio": wall["sandboxed"] / wall["in-process"], "in-process CPU s": used["in-process"],
            "sandboxed CPU s": used["sandboxed"], "CPU ratio": used["sandboxed"] / used["in-process"],
            "same results": same, "wall s (all runs)": {k: [round(r[1], 3) for r in v] for k, v in runs.items()}}


def measure(fn, n_points: int, repeats: int, model: str, data: str) -> list[dict]:
    rows = []
    for name in PARAMS:
        runs: dict[str, list] = {"in-process": [], "sandboxed": []}
        for _ in range(repeats):
            runs["in-process"].append(fn(name, model, data, n_points, sandbox=False))
            runs["sandboxed"].append(fn(name, model, data, n_points, sandbox=True))
        rows.append(compare(name, n_points, runs))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=540, help="test points")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--startups", type=int, default=10)
    parser.add_argument("--sections", default="startup,fixed,cli,library")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()
    sections = args.sections.split(",")
    from bastion.demo.cache import demo_model
    from bastion.sandbox.bwrap import bwrap_problem

    demo = demo_model("digits-cnn", progress=False)
    model, data = str(demo.model_path), str(demo.test_path)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "omp_threads": os.environ.get("OMP_NUM_THREADS", "default"),
               "isolation": bwrap_problem() or "bubblewrap + seccomp",
               "strace": shutil.which("strace") is not None, "load_before": os.getloadavg()}
    print(f"machine: {machine}")
    out: dict = {"machine": machine}
    columns = ["attack", "n", "in-process s", "sandboxed s", "wall ratio", "in-process CPU s", "sandboxed CPU s",
               "CPU ratio", "same results"]
    if "startup" in sections:
        out["startup"] = startup(model, args.startups)
        print(f"\nsandbox start-up (median of {args.startups}): {out['startup']}")
    if "fixed" in sections:
        out["fixed"] = fixed_cost(max(3, args.repeats))
        print(f"\nworker imports, plain and under strace: {out['fixed']}")
    if "cli" in sections:
        out["cli"] = measure(cli, args.n, args.repeats, model, data)
        print("\n`bastion attack` end to end (the acceptance measure):\n" + table(out["cli"], columns))
    if "library" in sections:
        out["library"] = measure(library, args.n, args.repeats, model, data)
        print("\nlibrary caller with PyTorch imported:\n" + table(out["library"], columns))
    machine["load_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
