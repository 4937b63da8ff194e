"""False alarms of the guard's extraction monitors: the demo digits' test set replayed in random orders.

    OMP_NUM_THREADS=1 python benchmarks/guard_replay.py POLICY.yaml [--tier default] [--orders 10] [--batch 20]

Each order is one key's stream, sent in batches as a client would, through `bastion.guard.rules.ExtractionMonitor`
(the code the server runs per key) with the policy's extraction rules and the training digits as reference data
(what `bastion guard serve --data digits-cnn-train.npz` uses). Prints how many replays were flagged and by what.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy")
    parser.add_argument("--tier", default="default")
    parser.add_argument("--orders", type=int, default=10)
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    from bastion.demo.cache import demo_model
    from bastion.guard.backend import ServedModel
    from bastion.guard.guard_policy import load_policy
    from bastion.guard.rules import ExtractionMonitor, Reference

    demo = demo_model("digits-cnn", progress=False)
    rules = load_policy(args.policy).tiers[args.tier].extraction
    reference = Reference(demo.train)
    model = ServedModel(str(demo.model_path))
    try:
        x = np.asarray(demo.test.x, dtype=np.float32)
        labels = model.predict(x).argmax(-1)
    finally:
        model.close()
    flagged = []
    for seed in range(args.orders):
        order = np.random.default_rng(seed).permutation(len(x))
        monitor = ExtractionMonitor(rules, reference)
        for i in range(0, len(x), args.batch):
            monitor.observe(x[order[i:i + args.batch]], labels[order[i:i + args.batch]])
        flagged.append(monitor.flagged)
    print(f"{sum(bool(f) for f in flagged)} of {args.orders} replays of {len(x)} test queries flagged: {flagged}")


if __name__ == "__main__":
    main()
