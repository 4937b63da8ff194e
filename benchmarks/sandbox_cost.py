"""Cost of the model sandbox: start-up, and the evasion benchmark sandboxed against in-process, in the same run.

    OMP_NUM_THREADS=1 python benchmarks/sandbox_cost.py [--n 540] [--repeats 3] [--startups 10]

Start-up: from starting bubblewrap (with strace around it) to the worker's interpreter saying `ready`, and on to
the first answer of a job (PyTorch imported in the worker, the model loaded, one forward pass).
Evasion: `auto` and PGD (L∞ eps 0.1, 20 steps, as in evasion_peers.py) on the demo digits CNN file and the demo test
split. In-process: load the model file and run the attack in this process (PyTorch already imported, as in the
`bastion` command). Sandboxed: the same through `bastion attack`'s path (start the worker, import PyTorch there,
load, attack, results back as JSON, strace log read). Wall-clock seconds, medians over the repeats, alternating
the two. Results must be equal.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from common import table

from bastion.attacks.evasion.auto import AutoAttack
from bastion.attacks.evasion.gradient import PGD
from bastion.demo.cache import demo_model
from bastion.models import load_target
from bastion.sandbox import Sandbox, SandboxOptions
from bastion.sandbox.bwrap import bwrap_problem
from bastion.sandbox.commands import sandboxed_attack

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


def in_process(attack: object, load: dict) -> tuple[dict, float]:
    wall = time.perf_counter()
    target = load_target(**load)
    result = attack.run(target, load["data"])
    return result.metrics, time.perf_counter() - wall


def sandboxed(attack: object, load: dict) -> tuple[dict, float]:
    wall = time.perf_counter()
    result = sandboxed_attack(attack, load["data"], {}, load, SandboxOptions(device="cpu"), [])
    result.metrics.pop("sandbox")
    return result.metrics, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=540, help="test points")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--startups", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    demo = demo_model("digits-cnn", progress=False)
    model = str(demo.model_path)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
          f"isolation: {bwrap_problem() or 'bubblewrap + seccomp'}")
    s = startup(model, args.startups)
    print(f"\nsandbox start-up (median of {args.startups}): ready {s['ready']:.3f} s; first answer (PyTorch "
          f"imported, model loaded, one forward pass) {s['first_answer']:.3f} s\n")
    load = {"path": model, "data": demo.test.head(args.n), "device": "cpu"}
    rows = []
    for name, attack in ATTACKS.items():
        runs: dict[str, list[tuple[dict, float]]] = {"in-process": [], "sandboxed": []}
        for _ in range(args.repeats):
            runs["in-process"].append(in_process(attack(), load))
            runs["sandboxed"].append(sandboxed(attack(), load))
        same = all(r[0] == runs["in-process"][0][0] for r in runs["in-process"] + runs["sandboxed"])
        wall = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
        rows.append({"attack": name, "n": args.n, "in-process s": wall["in-process"], "sandboxed s": wall["sandboxed"],
                     "extra s": wall["sandboxed"] - wall["in-process"],
                     "ratio": wall["sandboxed"] / wall["in-process"], "same results": same})
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
