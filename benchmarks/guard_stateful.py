"""The guard's stateful query detector (Chen, Carlini & Wagner, AsiaCCS-SPAI 2020; `bastion.guard.stateful`)
offline: real Jacobian-augmentation query logs (Papernot et al., AsiaCCS 2017) and natural streams through
`bastion.guard.rules.ExtractionMonitor` — the server's per-key code — with the rules of `guard_proof.py`.

    OMP_NUM_THREADS=1 python benchmarks/guard_stateful.py [--steps 0.1,0.3,0.5] [--pad 1000]

Prints the calibrated threshold and the cost per query; the false alarms on the test digits (10 orders) and on the
reference half the threshold was not calibrated on; where each Jacobian stream (the attack's 270 natural
evaluation queries first, as through the server) is first flagged and by which monitor; and the adaptive attacker
who spaces its rounds out: `--pad` distinct natural digits (train + test, cycled) before each augmentation round, so
that a parent has left the key's buffer when its children arrive — with PRADA on and off, and a natural control;
and the attacker who splits its stream over keys (the evaluation queries on one key, each augmentation round on a
new key), with the detector's buffer per key (`stateful_scope: key`) and shared by the tier (`tier`), plus a
control: the test digits and the reference half sent by 10 keys in turns through the shared buffer.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np


def first_flag(rules, reference, target, stream: np.ndarray, attack: np.ndarray, batch: int = 20) -> str:
    """'sent N (attack queries A) by RULES' at the first flag, or 'not flagged'."""
    import torch

    from bastion.guard.rules import ExtractionMonitor

    monitor = ExtractionMonitor(rules, reference)
    labels = target.labels(torch.as_tensor(stream)).numpy()
    for i in range(0, len(stream), batch):
        if monitor.observe(stream[i:i + batch], labels[i:i + batch]):
            end = min(i + batch, len(stream))
            return f"flagged at query {end} ({int(attack[:end].sum())} attack queries) by {monitor.flagged}"
    return f"not flagged ({len(stream)} queries)"


def split_flag(rules, reference, target, chunks: list[tuple[int, np.ndarray, bool]], batch: int = 20) -> str:
    """Several keys in turn (chunks of (key, queries, is_attack)), each with its own monitor and, with scope "tier",
    one shared buffer: where the first key is flagged, and how many keys are flagged by the end."""
    import torch

    from bastion.guard.rules import ExtractionMonitor
    from bastion.guard.stateful import SharedQueries

    shared = SharedQueries(rules.stateful_shared_buffer) if rules.stateful_scope == "tier" else None
    monitors: dict[int, ExtractionMonitor] = {}
    sent = attack_sent = 0
    first = None
    for key, queries, is_attack in chunks:
        monitor = monitors.setdefault(key, ExtractionMonitor(rules, reference, shared))
        labels = target.labels(torch.as_tensor(queries)).numpy()
        for i in range(0, len(queries), batch):
            part = queries[i:i + batch]
            sent += len(part)
            attack_sent += len(part) if is_attack else 0
            if monitor.observe(part, labels[i:i + batch]) and first is None:
                first = f"key {key} flagged at query {sent} ({attack_sent} attack queries) by {monitor.flagged}"
    flagged = sum(bool(m.flagged) for m in monitors.values())
    return f"{first or 'not flagged'}; {flagged}/{len(monitors)} keys flagged by the end"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="0.1,0.3,0.5")
    parser.add_argument("--pad", type=int, default=1000)
    args = parser.parse_args()

    from bastion.attacks.extraction.jacobian import JacobianAugmentation
    from bastion.core.data import Dataset
    from bastion.demo.cache import demo_model
    from bastion.guard.guard_policy import parse_policy
    from bastion.guard.rules import Reference
    from bastion.guard.stateful import StatefulDetector
    from bastion.models import load_target

    sys.path.insert(0, str(Path(__file__).parent))
    from guard_proof import EXTRACTION

    rules = parse_policy({"tiers": {"t": {"extraction": EXTRACTION}}}).tiers["t"].extraction
    demo = demo_model("digits-cnn", progress=False)
    reference, target = Reference(demo.train), load_target(demo.model_path, device="cpu")
    threshold = reference.stateful_threshold(rules.stateful_k, rules.stateful_buffer, rules.stateful_quantile)
    detector, noise = StatefulDetector(threshold, 1, 10, 1000), np.random.default_rng(0).random((3000, 64))
    detector.observe(noise[:1000])
    start = time.perf_counter()
    for i in range(1000, 3000):
        detector.observe(noise[i:i + 1])
    print(f"threshold {threshold:.3f} (quantile {rules.stateful_quantile} of the held-out half's stream); "
          f"{(time.perf_counter() - start) / 2000 * 1e6:.0f} us per one-input request, full buffer")

    test_x, test_y = np.asarray(demo.test.x, np.float32), np.asarray(demo.test.y)
    none = np.zeros(len(test_x), bool)
    replays = [first_flag(rules, reference, target, test_x[np.random.default_rng(s).permutation(len(test_x))], none)
               for s in range(10)]
    print(f"test digits, 10 orders: {sum(not r.startswith('not') for r in replays)}/10 flagged")
    index = reference.index.numpy().reshape(-1, *test_x.shape[1:])
    print(f"reference half ({len(index)} training digits, not calibrated on): "
          f"{first_flag(rules, reference, target, index, np.zeros(len(index), bool))}")
    tier_rules = dataclasses.replace(rules, stateful_scope="tier")
    natural_turns = np.concatenate([test_x, index])
    turns = [(i % 10, natural_turns[i * 20:(i + 1) * 20], False) for i in range(len(natural_turns) // 20)]
    print(f"natural, 10 keys in turns through one shared buffer ({len(natural_turns)} digits): "
          f"{split_flag(tier_rules, reference, target, turns)}; PRADA off: "
          f"{split_flag(dataclasses.replace(tier_rules, prada_delta=None), reference, target, turns)}")

    order = np.random.default_rng(0).permutation(len(test_x))
    evaluation, seeds = order[: len(order) // 2], order[len(order) // 2:]
    natural = np.concatenate([np.asarray(demo.train.x, np.float32), test_x])
    natural = natural[np.random.default_rng(1).permutation(len(natural))]
    for step in (float(s) for s in args.steps.split(",")):
        attack = JacobianAugmentation(budget=[100, 300, 1000], step=step, epochs=10, round_epochs=5, ood_samples=0,
                                      monitor=False, transfer_samples=0, seed=0, arch=demo.arch)
        result = attack.run(target, Dataset(test_x[evaluation], test_y[evaluation]),
                            pool=Dataset(test_x[seeds], test_y[seeds]))
        queries = attack.query_log_.inputs.numpy().reshape(-1, *test_x.shape[1:])
        fidelity = " / ".join(f"{r['fidelity']:.3f}" for r in result.metrics["fidelity"])
        stream = np.concatenate([test_x[evaluation], queries])
        mask = np.concatenate([np.zeros(len(evaluation), bool), np.ones(len(queries), bool)])
        print(f"jacobian λ={step} (fidelity unguarded {fidelity}): "
              f"{first_flag(rules, reference, target, stream, mask)}")
        if step != 0.1:
            continue
        bounds = [0, 100, 200, 300, 600, 1000]  # the attack's rounds at budgets 100/300/1000 (each at most doubles)
        chunks = [(0, test_x[evaluation], False)] + [(r + 1, queries[a:b], True) for r, (a, b) in
                                                      enumerate(zip(bounds[:-1], bounds[1:], strict=True))]
        small = [(0, test_x[evaluation], False)] + [(1 + i // 50, queries[i:i + 50], True)
                                                     for i in range(0, len(queries), 50)]
        for scope in ("key", "tier"):
            scoped = dataclasses.replace(rules, stateful_scope=scope)
            print(f"  split over keys (one per round), scope {scope}: "
                  f"{split_flag(scoped, reference, target, chunks)}")
            print(f"  split over keys (50 queries each), scope {scope}: "
                  f"{split_flag(scoped, reference, target, small)}")
        if not args.pad:
            continue
        bounds = [0, 100, 200, 300, 600, 1000]  # the attack's rounds at budgets 100/300/1000 (each at most doubles)
        parts, mask_parts, k = [test_x[evaluation]], [np.zeros(len(evaluation), bool)], 0
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            if a:
                parts.append(natural[np.arange(k, k + args.pad) % len(natural)])
                mask_parts.append(np.zeros(args.pad, bool))
                k += args.pad
            parts.append(queries[a:b])
            mask_parts.append(np.ones(b - a, bool))
        spaced, mask = np.concatenate(parts), np.concatenate(mask_parts)
        print(f"  spaced out: {args.pad} natural digits before each round: "
              f"{first_flag(rules, reference, target, spaced, mask)}")
        no_prada = dataclasses.replace(rules, prada_delta=None)
        print(f"  spaced out, PRADA off: {first_flag(no_prada, reference, target, spaced, mask)}")
        control = natural[np.arange(4 * args.pad) % len(natural)]
        print(f"  control: the padding alone ({len(control)} natural digits, cycled): "
              f"{first_flag(rules, reference, target, control, np.zeros(len(control), bool))}")


if __name__ == "__main__":
    main()
