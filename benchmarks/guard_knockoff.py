"""Does the guard's extraction monitor see Knockoff Nets? Real Knockoff runs on the demo digits CNN, their query
streams replayed through the guard's per-key monitor, next to replays of the test digits (false alarms).

    OMP_NUM_THREADS=1 python benchmarks/guard_knockoff.py [--policy guard.yaml] [--tier default] [--budget 1000]

Pools: `test` (half of the 540 test digits: the in-distribution pool of docs/benchmarks.md's proof by attack) and
`natural` (8x8 grey-scale patches of the two photographs scikit-learn ships, scaled to [0, 1]: natural images from
another distribution, the setting of the Knockoff paper, Orekondy et al., CVPR 2019, whose pools are ImageNet /
OpenImages photographs for other victims). Samplings: random and adaptive (the paper's gradient bandit). Each
attack's logged queries (`query_log_`) go through `bastion.guard.rules.ExtractionMonitor` in batches of 20, in the
order the attack sent them, with the training digits as reference data (what `bastion guard serve --data` uses).
Prints where each stream is first flagged (by which detector) and the copy's fidelity; a Jacobian-augmentation run
(Papernot et al., AsiaCCS 2017) is the synthetic-query contrast.
"""

from __future__ import annotations

import argparse

import numpy as np

DEFAULT_RULES = {"tiers": {"default": {"extraction": {"prada_delta": 0.96, "prada_min_queries": 100,
                                                      "ood_share": 0.3, "ood_min_queries": 50}}}}


def natural_pool(n: int, seed: int = 0) -> np.ndarray:
    """`n` 8x8 patches of scikit-learn's sample photographs: random 32-64 px crops, block-averaged, min-max scaled."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    images = [img.mean(-1) for img in load_sample_images().images]
    out = np.empty((n, 1, 8, 8), np.float32)
    for i in range(n):
        img = images[rng.integers(len(images))]
        size = 8 * int(rng.integers(4, 9))
        r, c = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size)
        patch = img[r:r + size, c:c + size].reshape(8, size // 8, 8, size // 8).mean((1, 3))
        out[i, 0] = (patch - patch.min()) / max(float(np.ptp(patch)), 1e-6)
    return out


def first_flag(rules, reference, x: np.ndarray, labels: np.ndarray, batch: int = 20) -> tuple[int | None, list[str]]:
    from bastion.guard.rules import ExtractionMonitor

    monitor = ExtractionMonitor(rules, reference)
    for i in range(0, len(x), batch):
        monitor.observe(x[i:i + batch], labels[i:i + batch])
    return monitor.flagged_at, monitor.flagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy")
    parser.add_argument("--tier", default="default")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--orders", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=5, help="attack seeds per sampling on the test pool")
    parser.add_argument("--no-knockoff", action="store_true", help="only the replays and the Jacobian run")
    args = parser.parse_args()
    import torch

    from bastion.attacks.extraction.knockoff import KnockoffNets
    from bastion.core.data import Dataset
    from bastion.demo.cache import demo_model
    from bastion.guard.guard_policy import load_policy, parse_policy
    from bastion.guard.rules import Reference
    from bastion.models import load_target

    policy = parse_policy(DEFAULT_RULES) if args.policy is None else load_policy(args.policy)
    rules = policy.tiers[args.tier].extraction
    demo = demo_model("digits-cnn", progress=False)
    reference = Reference(demo.train)
    target = load_target(str(demo.model_path), device="cpu")
    test_x = np.asarray(demo.test.x, np.float32)
    labels = target.labels(torch.as_tensor(test_x)).numpy()
    replays = [first_flag(rules, reference, test_x[o], labels[o])
               for o in (np.random.default_rng(s).permutation(len(test_x)) for s in range(args.orders))]
    flagged = [r for r in replays if r[0] is not None]
    print(f"replays of the {len(test_x)} test digits: {len(flagged)}/{args.orders} flagged {[r[1] for r in flagged]}")

    halves = [first_flag(rules, reference, test_x[o], labels[o]) for o in
              (np.random.default_rng(100 + s).permutation(len(test_x))[: len(test_x) // 2] for s in range(20))]
    flagged = [r for r in halves if r[0] is not None]
    print(f"replays of random halves ({len(test_x) // 2}) of the test digits, what random Knockoff on the test pool "
          f"sends: {len(flagged)}/20 flagged {[(r[0], r[1]) for r in flagged]}")
    half = np.random.default_rng(0).permutation(len(test_x))[: len(test_x) // 2]
    natural = natural_pool(2 * args.budget)
    pools = {"test": Dataset(test_x[half], np.asarray(demo.test.y)[half]),
             "natural": Dataset(natural, target.labels(torch.as_tensor(natural)).numpy())}  # arms: victim labels
    far = reference.nearest(natural) > np.quantile(reference.held_out_distance, rules.ood_quantile)
    print(f"natural pool: {far.mean():.0%} of its patches beyond the distance threshold")
    for pool_name, pool in ({} if args.no_knockoff else pools).items():
        for sampling in ("random", "adaptive"):
            budget = min(args.budget, len(pool.x))
            flags = []
            for seed in range(args.seeds if pool_name == "test" else 1):
                attack = KnockoffNets(budget=budget, sampling=sampling, epochs=args.epochs, ood_samples=0,
                                      arch="bastion.demo.models:digits_cnn", monitor=False, seed=seed)
                result = attack.run(target, demo.test, pool=pool)
                log = attack.query_log_
                x, y = log.inputs.numpy(), log.answers.numpy()
                y = y if y.ndim == 1 else y.argmax(-1)
                flags.append(first_flag(rules, reference, x, y))
                print(f"knockoff {sampling:8s} pool={pool_name:7s} seed={seed} queries={len(x):5d} flagged at "
                      f"{flags[-1][0]} by {flags[-1][1]}; fidelity {result.metrics['fidelity']}")
            print(f"  -> {sum(f[0] is not None for f in flags)}/{len(flags)} runs flagged")
    from bastion.attacks.extraction.jacobian import JacobianAugmentation

    attack = JacobianAugmentation(budget=args.budget, epochs=args.epochs, ood_samples=0, monitor=False, seed=0,
                                  arch="bastion.demo.models:digits_cnn")
    result = attack.run(target, demo.test, pool=pools["test"])  # its seed set
    x, y = attack.query_log_.inputs.numpy(), attack.query_log_.answers.numpy()
    at, by = first_flag(rules, reference, x, y if y.ndim == 1 else y.argmax(-1))
    print(f"jacobian (seeds from the test digits) queries={len(x)} flagged at {at} by {by}; "
          f"fidelity {result.metrics['fidelity']}")

if __name__ == "__main__":
    main()
