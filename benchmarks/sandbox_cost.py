"""Cost of the model sandbox: start-up, and the evasion benchmark sandboxed against in-process, in the same run.

    OMP_NUM_THREADS=1 python benchmarks/sandbox_cost.py [--n 540] [--repeats 3] [--startups 10]
        [--sections startup,library,cli]

Start-up: from starting bubblewrap (with strace around it) to the worker's interpreter saying `ready`, and on to
the first answer of a job (PyTorch imported in the worker, the model loaded, one forward pass); beside it, what a
bare `python -c "import bastion..."` of the same modules takes outside any sandbox.
Evasion: `auto` and PGD (L∞ eps 0.1, 20 steps, as in evasion_peers.py) on the demo digits CNN file and the demo test
split. In-process: load the model file and run the attack in this process (PyTorch already imported, as in the
`bastion` command). Sandboxed: the same through `bastion attack`'s path (start the worker, import PyTorch there,
load, attack, results back as JSON, strace log read). CLI: the user's view, `bastion attack evasion pgd|auto
MODEL --data TEST --json` against the same with `--no-sandbox` (both processes import PyTorch once; the sandboxed
one also starts the worker). Wall-clock seconds, medians over the repeats, alternating the two. CPU seconds
(library path) count this process, strace, bubblewrap and the worker, which the machine's other jobs inflate less
than wall-clock time. Results must be equal.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from common import table

from bastion.attacks.evasion.auto import AutoAttack
from bastion.attacks.evasion.gradient import PGD
from bastion.demo.cache import demo_model
from bastion.models import load_target
from bastion.sandbox import Sandbox, SandboxOptions, open_sandbox, run_job
from bastion.sandbox.bwrap import bwrap_problem
from bastion.sandbox.commands import checked_result

EPS, STEPS = 0.1, 20


def startup(model: str, n: int) -> dict[str, float]:
    ready, first = [], []
    for _ in range(n):
        start = time.perf_counter()
        sandbox = Sandbox(read_only=[model]).start()
        ready.append(sandbox.wait_ready())
        list(sandbox.request("probe", load={"path": model, "device": "cpu"}))
        first.append(time.perf_counter() - start)
        sandbox.close()
    return {"ready": statistics.median(ready), "first_answer": statistics.median(first)}


ATTACKS = {"pgd": lambda: PGD(eps=EPS, steps=STEPS, step_size=2.5 * EPS / STEPS, seed=0),
           "auto": lambda: AutoAttack(eps=EPS, seed=0)}  # a fresh object per run


def bare_import(n: int) -> float:
    """Seconds for a plain interpreter to import what a worker imports (no sandbox)."""
    code = "import bastion.sandbox.jobs as j; j.preload()"
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cli(name: str, model: str, data: str, n: int, sandbox: bool) -> tuple[dict, float, float]:
    params = ["--steps", str(STEPS), "--step-size", str(2.5 * EPS / STEPS)] if name == "pgd" else []
    command = [sys.executable, "-m", "bastion", "attack", "evasion", name, model, "--data", data, "--eps", str(EPS),
               "--n-samples", str(n), "--device", "cpu", "--json", *params, *([] if sandbox else ["--no-sandbox"])]
    start, child = time.perf_counter(), children_cpu()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    metrics = json.loads(done.stdout)["metrics"]
    metrics.pop("sandbox")
    return metrics, seconds, children_cpu() - child  # the sandboxed worker's CPU is not counted here


def compare(name: str, n: int, runs: dict[str, list[tuple[dict, float, float]]], cpu: bool = True) -> dict:
    same = all(r[0] == runs["in-process"][0][0] for r in runs["in-process"] + runs["sandboxed"])
    wall = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
    row = {"attack": name, "n": n, "in-process s": wall["in-process"], "sandboxed s": wall["sandboxed"],
           "wall ratio": wall["sandboxed"] / wall["in-process"]}
    if cpu:
        used = {k: statistics.median(r[2] for r in v) for k, v in runs.items()}
        row.update({"in-process CPU s": used["in-process"], "sandboxed CPU s": used["sandboxed"],
                    "CPU ratio": used["sandboxed"] / used["in-process"]})
    return {**row, "same results": same}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def in_process(attack: object, load: dict) -> tuple[dict, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    target = load_target(**load)
    result = attack.run(target, load["data"])
    return result.metrics, time.perf_counter() - wall, time.process_time() - cpu


def sandboxed(attack: object, load: dict) -> tuple[dict, float, float]:
    """`bastion attack`'s sandboxed path; CPU: this process, strace and bubblewrap, and the worker's own count."""
    wall, cpu, child = time.perf_counter(), time.process_time(), children_cpu()
    sandbox = open_sandbox(load["path"], None, SandboxOptions(device="cpu"))
    run = run_job(sandbox, "attack", {"attack": attack, "evaluation": load["data"], "extra": {}, "load": load})
    run.raise_error()
    seconds = time.perf_counter() - wall
    cpu = time.process_time() - cpu + children_cpu() - child + sandbox.worker_cpu
    return checked_result(run.result).metrics, seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=540, help="test points")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--startups", type=int, default=10)
    parser.add_argument("--sections", default="startup,library,cli")
    args = parser.parse_args()
    sections = args.sections.split(",")
    torch.set_num_threads(1)
    demo = demo_model("digits-cnn", progress=False)
    model = str(demo.model_path)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
          f"isolation: {bwrap_problem() or 'bubblewrap + seccomp'}")
    if "startup" in sections:
        s = startup(model, args.startups)
        print(f"\nsandbox start-up (median of {args.startups}): ready {s['ready']:.3f} s; first answer (PyTorch "
              f"imported, model loaded, one forward pass) {s['first_answer']:.3f} s; bare import of the same "
              f"modules, no sandbox: {bare_import(max(3, args.startups // 2)):.3f} s")
    load = {"path": model, "data": demo.test.head(args.n), "device": "cpu"}
    if "library" in sections:
        rows = []
        for name, attack in ATTACKS.items():
            runs: dict[str, list[tuple[dict, float, float]]] = {"in-process": [], "sandboxed": []}
            for _ in range(args.repeats):
                runs["in-process"].append(in_process(attack(), load))
                runs["sandboxed"].append(sandboxed(attack(), load))
            rows.append(compare(name, args.n, runs))
        print("\nlibrary path (the parent has PyTorch imported):\n" + table(rows, list(rows[0])))
    if "cli" in sections:
        rows = []
        for name in ATTACKS:
            runs = {"in-process": [], "sandboxed": []}
            for _ in range(args.repeats):
                runs["in-process"].append(cli(name, model, str(demo.test_path), args.n, sandbox=False))
                runs["sandboxed"].append(cli(name, model, str(demo.test_path), args.n, sandbox=True))
            rows.append(compare(name, args.n, runs, cpu=False))
        print("\n`bastion attack` end to end:\n" + table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
