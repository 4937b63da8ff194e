"""Availability figures: sponge vs random noise vs natural inputs, early-exit slowdown, mitigations, and
over-generation on Gemma 3 270M.

    python benchmarks/availability.py classifiers     # demo CNN, early-exit CNN (+ an untuned seed), ~1-2 min
    python benchmarks/availability.py lm --cap 64 --n 20 [--mode chat|complete]   # Gemma 3 270M, minutes
    python benchmarks/availability.py deadline --cap 64 --n 6 --select 3 [--deadline-s 2.5]   # an enforced deadline

Classifiers: the demo digits CNN (`bastion demo`'s model) and the early-exit CNN (`bastion.demo.early_exit`), each
on 128 held-out digits: natural inputs, uniform random noise in the same bounds, and the attack (white-box sponge,
DeepSloth for the early-exit model). Per input: activation density (the sponge paper's energy proxy), latency
(median of 5 timings, 1 thread; p50/p95) and, where RAPL/NVML is readable, energy; where it is not the output says
so. Then the mitigations (`sponge-detect`, `resource-limits`). The transfer check runs the same attack settings on an
early-exit model trained with another seed and threshold, and the sponge on an MLP, none of which was tuned on.

LM: natural short-answer prompts against the built-in over-generation prompts (`overgen`, chat template), both
under `max_new_tokens=cap`: mean tokens per request, the fraction reaching the cap; then `generation-cap` (cap/4).
`deadline`: the same attack without and with generation stopped at 2 × the natural p99 seconds
(`generation-deadline`): seconds per request, requests cut, natural tokens lost, overrun past the deadline.
`--mode complete` sends raw continuations (what a base model is: Gemma 3 270M's GGUF ships no chat template).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from common import table
from torch import nn

from bastion.attacks.availability import measure
from bastion.attacks.availability.deepsloth import EarlyExitSlowdown
from bastion.attacks.availability.energy import NOT_EXPOSED, EnergyMeter
from bastion.attacks.availability.lm import Overgen
from bastion.attacks.availability.lm_prompts import NATURAL_PROMPTS
from bastion.attacks.availability.sponge import Sponge
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer
from bastion.defenses.availability.request_limits import GenerationCap, GenerationDeadline, ResourceLimits
from bastion.defenses.availability.sponge_detect import SpongeDetect
from bastion.demo.cache import demo_model
from bastion.demo.datasets import digits
from bastion.demo.early_exit import N_EXITS, save_early_exit, train_early_exit
from bastion.models import load_target

ECHO_LIBRARY = [  # a base model that echoes the user turn (Gemma 3 270M in the fallback chat format) echoes these
    "Say tree: " + "tree " * 40,
    "Count: " + " ".join(str(i) for i in range(100, 140)),
    "Letters: " + "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 2,
    "Repeat: " + "blue sky " * 25,
    "List: " + ", ".join(f"item {i}" for i in range(1, 25)),
]


def _stats(target, probe, x: torch.Tensor, depth=None) -> dict:
    row = {"density": float(probe.density(x)[0].mean())}
    ms = measure.latencies(target, x, repeats=5, warmup=3, threads=1) * 1e3
    row.update({"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95))})
    meter = EnergyMeter(target.device)
    if meter.available:
        with torch.no_grad(), measure.fixed_threads(1):
            joules, done = meter.joules(lambda: (target.labels(x), len(x))[1])
        row["mJ_per_input"] = 1e3 * joules / max(done, 1)
    if depth is not None:
        with torch.no_grad():
            d = depth(x).cpu().numpy()
        row["full_depth"] = float((d == N_EXITS - 1).mean())
        row["mean_exits"] = float((d + 1).mean())
    return row


def _classifier_rows(name: str, target, x: torch.Tensor, attack, depth=None) -> list[dict]:
    probe = measure.ActivationProbe(target.model)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    with measure.fixed_threads(1):
        crafted = attack.craft(target, x).detach()
    rows = []
    for kind, inputs in (("natural", x), ("random noise", noise), (attack.name, crafted)):
        rows.append({"model": name, "inputs": kind, **_stats(target, probe, inputs, depth)})
    return rows


def mlp(train) -> TorchTarget:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    with measure.fixed_threads(1):
        Trainer(epochs=5, device="cpu").fit(model, train.x, train.y)
    return TorchTarget(model.eval(), (1, 8, 8), device="cpu")


def classifiers() -> None:
    train, test = digits()
    x = torch.as_tensor(test.x[:128], dtype=torch.float32)
    cnn = load_target(str(demo_model("digits-cnn").model_path))
    ee = train_early_exit(train, epochs=15, seed=0).eval()
    ee_other = train_early_exit(train, threshold=0.8, epochs=15, seed=1).eval()
    save_early_exit(ee, "/tmp/bastion-bench-ee.pt")  # TorchScript: the mitigations read every layer on every input
    ee_script = load_target("/tmp/bastion-bench-ee.pt")
    ee_t, ee_other_t = (TorchTarget(m, (1, 8, 8), device="cpu") for m in (ee, ee_other))
    sponge, sloth = Sponge(steps=100), EarlyExitSlowdown(eps=0.2, steps=50)
    rows = _classifier_rows("demo digits CNN", cnn, x, sponge)
    rows += _classifier_rows("early-exit CNN (seed 0, t=0.9)", ee_t, x, sloth, ee.exit_depth)
    rows += _classifier_rows("early-exit CNN (seed 1, t=0.8, untuned)", ee_other_t, x, sloth, ee_other.exit_depth)
    rows += _classifier_rows("MLP 64-128-64 (untuned)", mlp(train), x, sponge)
    energy = EnergyMeter("cpu")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads "
          f"available, timings on 1; energy: {energy.source if energy.available else NOT_EXPOSED}\n")
    print(table(rows, ["model", "inputs", "density", "p50_ms", "p95_ms", "mJ_per_input", "full_depth",
                       "mean_exits"]))
    print("\nsponge-detect (fpr 0.05; fitted on 64 natural inputs, 64 held out):")
    det_rows = []
    for name, target in (("demo digits CNN", cnn), ("early-exit CNN", ee_script)):
        m = SpongeDetect(fpr=0.05, steps=100).run(target, test.head(128)).metrics
        for row in m["against"]:
            passed = row["passed_amplification"]["density"]
            det_rows.append({"model": name, "attack": ("adaptive " if row["adaptive"] else "") + row["attack"],
                             "detected": row["detected"], "by_density": row["detected_by_density"],
                             "density_x": row["amplification"]["density"]["estimate"],
                             "passed_density_x": passed["estimate"] if passed else "none passed",
                             "latency_x": row["amplification"]["latency_ms"]["estimate"],
                             "false_alarms": m["false_alarms"]["measured"], "overhead_x": m["overhead"]["ratio"]})
    print(table(det_rows, ["model", "attack", "detected", "by_density", "density_x", "passed_density_x",
                           "latency_x", "false_alarms", "overhead_x"]))
    print("\nresource-limits (deadline 2 x natural p99, modelled):")
    lim_rows = []
    for name, target in (("demo digits CNN", cnn), ("early-exit CNN", ee_script)):
        limits = ResourceLimits(steps=50).run(target, test.head(64)).metrics["limits"]
        deadline = limits[1]
        for row in deadline["against"]:
            if "not_applicable" in row:
                continue
            lim_rows.append({"model": name, "attack": row["attack"], "deadline_ms": deadline["deadline_ms"],
                             "latency_x_before": row["before"]["estimate"], "latency_x_after": row["after"]["estimate"],
                             "attack_cut": row["cut"], "natural_cut": deadline["natural_cut"],
                             "worst_case_x": row["worst_case_bound"],
                             "input_size": f"x{limits[0]['before']['largest_scale']} -> "
                                           f"x{limits[0]['after']['largest_scale']}"})
    print(table(lim_rows, ["model", "attack", "deadline_ms", "latency_x_before", "latency_x_after", "attack_cut",
                           "natural_cut", "worst_case_x", "input_size"]))


def lm(cap: int, n: int, mode: str, echo: bool = False, select: int = 0) -> None:
    from bastion.lm import Sampling, gemma_path, open_lm

    start = time.perf_counter()
    target = open_lm(gemma_path(), sampling=Sampling(max_new_tokens=cap))
    print(f"opened {target.describe()} in {time.perf_counter() - start:.1f} s")
    prompts = NATURAL_PROMPTS[:n]
    result = Overgen(placement="alone", mode=mode, max_new_tokens=cap, n_bootstrap=500,
                     library=ECHO_LIBRARY if echo else None, select=select).run(target, prompts=prompts)
    s = result.samples
    nat, att = np.asarray(s["natural_tokens"]), np.asarray(s["attack_tokens"])
    rows = [{"prompts": "natural", "n": len(nat), "mean_tokens": float(nat.mean()),
             "reach_cap": float((nat >= cap).mean()), "mean_s": float(np.mean(s["natural_latency_ms"]) / 1e3)},
            {"prompts": "overgen", "n": len(att), "mean_tokens": float(att.mean()),
             "reach_cap": float(np.mean(s["attack_capped"])), "mean_s": float(np.mean(s["attack_latency_ms"]) / 1e3)}]
    if select:
        print(f"selection ({select} kept of {len(result.metrics['selection'])} tried once each): "
              + "; ".join(f"{row['tokens']} tokens: {row['prompt'][:40]!r}" for row in result.metrics["selection"]))
    print(f"\nGemma 3 270M, {mode} mode, greedy, max_new_tokens={cap}, select={select} "
          f"({time.perf_counter() - start:.0f} s, {result.queries} queries):")
    print(table(rows, ["prompts", "n", "mean_tokens", "reach_cap", "mean_s"]))
    dims = {d["metric"]: d["ratio"] for d in result.metrics["dimensions"]}
    print(f"tokens ratio {json.dumps(dims['tokens'])} (lower bound: capped), natural mean / cap = "
          f"{nat.mean() / cap:.3f}")
    if echo or select:
        return
    low = max(1, cap // 4)
    m = GenerationCap(cap=low, base_cap=cap, mode=mode, n_bootstrap=500).run(target, prompts=prompts).metrics
    print(f"\ngeneration-cap {cap} -> {low}: attack tokens {m['before']['attack_tokens']:.1f} -> "
          f"{m['after']['attack_tokens']:.1f}, natural {m['before']['natural_tokens']:.1f} -> "
          f"{m['after']['natural_tokens']:.1f}, natural replies truncated {m['natural_truncated']:.0%}, "
          "attack s/request "
          f"{m['before']['attack_ms'] / 1e3:.2f} -> {m['after']['attack_ms'] / 1e3:.2f} "
          f"(total {time.perf_counter() - start:.0f} s)")


def deadline(cap: int, n: int, mode: str, select: int, seconds: float | None) -> None:
    from bastion.lm import Sampling, gemma_path, open_lm

    start = time.perf_counter()
    target = open_lm(gemma_path(), sampling=Sampling(max_new_tokens=cap))
    m = GenerationDeadline(deadline_s=seconds, max_new_tokens=cap, mode=mode, select=select, n_bootstrap=500).run(
        target, prompts=NATURAL_PROMPTS[:n]).metrics
    rows = [{"deadline": key, "natural_s_mean": m[key]["natural_ms"]["mean"] / 1e3,
             "attack_s_mean": m[key]["attack_ms"]["mean"] / 1e3, "attack_s_max": m[key]["attack_ms"]["p99"] / 1e3,
             "attack_tokens": m[key]["attack_tokens"], "natural_tokens": m[key]["natural_tokens"],
             "attack_cut": m[key]["attack_cut"], "natural_cut": m[key]["natural_cut"],
             "seconds_ratio": m[key]["seconds_ratio"]["estimate"]} for key in ("before", "after")]
    print(f"\nGemma 3 270M, {mode} mode, greedy, max_new_tokens={cap}, overgen select={select}, {n} prompt pairs, "
          f"deadline {m['deadline_s']:.2f} s ({'given' if seconds else '2 x natural p99'}; enforced; "
          f"{time.perf_counter() - start:.0f} s):")
    print(table(rows, list(rows[0])))
    print(f"seconds ratio after: {json.dumps(m['after']['seconds_ratio'])}; worst case for any request "
          f"x{m['worst_case_bound']:.2f}; overrun past the deadline {m['overrun_ms']:.0f} ms; natural tokens lost "
          f"{m['natural_tokens_lost']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("classifiers", "lm", "deadline"))
    parser.add_argument("--cap", type=int, default=64)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--mode", choices=("chat", "complete"), default="chat")
    parser.add_argument("--echo", action="store_true", help="the repetition library instead of the built-in prompts")
    parser.add_argument("--select", type=int, default=0, help="overgen's adaptive step: try each library prompt "
                        "once and keep the K that drew the most tokens")
    parser.add_argument("--deadline-s", type=float, default=None, help="deadline part: a fixed deadline "
                        "(default 2 x the natural p99 measured first; on a shared machine that moves with the load)")
    args = parser.parse_args()
    if args.part == "classifiers":
        classifiers()
    elif args.part == "deadline":
        deadline(args.cap, args.n, args.mode, args.select, args.deadline_s)
    else:
        lm(args.cap, args.n, args.mode, args.echo, args.select)


if __name__ == "__main__":
    main()
