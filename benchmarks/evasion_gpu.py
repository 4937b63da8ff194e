"""GPU throughput of Bastion's evasion attacks: PGD-10 and `auto` on a CIFAR-sized ResNet-18, synthetic data.

    PYTHONPATH=src python benchmarks/evasion_gpu.py --device cuda [--n 2048] [--json gpu.json]
    PYTHONPATH=src python benchmarks/evasion_gpu.py --device cpu --n 32      # a smoke test of the script

First it checks the CUDA path: the target and the results live on the device, and PGD run on the CPU and on the GPU
from the same seed agrees on a small batch. Then it times, after one warm-up run each:

- PGD-10 (L∞ 8/255) as Bastion runs it (fooled images leave the batch), and with compaction off (every image takes
  all 10 forward-backward passes: the like-for-like throughput of a peer that never drops images);
- `auto` (APGD-CE, APGD-T, FAB-T, Square and the sanity checks) at L∞ 8/255.

Model: `bastion.demo.models:resnet18_cifar` with seeded random weights (no download); labels are its own
predictions, so every image starts correctly classified and is attacked. Inputs: uniform noise in [0, 1]. Images per
second = images evaluated / wall seconds (CUDA synchronised); passes per second = model inputs sent / seconds.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bastion.attacks.evasion.auto import AutoAttack
from bastion.attacks.evasion.gradient import PGD
from bastion.core.data import Dataset
from bastion.core.target import TorchTarget
from bastion.demo.models import resnet18_cifar

EPS = 8 / 255


def synced(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_case(n: int, device: str, seed: int = 0) -> tuple[TorchTarget, Dataset]:
    torch.manual_seed(seed)
    target = TorchTarget(resnet18_cifar(), (3, 32, 32), n_classes=10, device=device)
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    y = target.labels(x).cpu()
    target.reset_queries()
    return target, Dataset(x.numpy(), y.numpy(), "synthetic 3x32x32")


def timed_run(attack, target: TorchTarget, data: Dataset) -> dict:
    attack.run(target, data.subset(slice(0, min(64, len(data)))))  # warm-up (cuDNN algorithm choice, allocator)
    target.reset_queries()
    synced(target.device)
    start = time.perf_counter()
    result = attack.run(target, data)
    synced(target.device)
    seconds = time.perf_counter() - start
    return {"robust_accuracy": result.metrics["robust_accuracy"][0]["robust_accuracy"], "seconds": seconds,
            "images_per_s": len(data) / seconds, "passes_per_s": target.queries / seconds,
            "result_device": result.device}


def cuda_checks(n: int = 64) -> dict:
    """The CUDA path: placement, and CPU/GPU agreement of PGD from the same seed (cuDNN may differ in the last
    bits, so a handful of borderline images may flip)."""
    gpu, data = make_case(n, "cuda", seed=1)
    cpu, _ = make_case(n, "cpu", seed=1)
    cpu.model.load_state_dict({k: v.cpu() for k, v in gpu.model.state_dict().items()})
    on_gpu = PGD(eps=EPS, steps=10, seed=0).run(gpu, data)
    on_cpu = PGD(eps=EPS, steps=10, seed=0).run(cpu, data)
    ra_gpu = on_gpu.metrics["robust_accuracy"][0]["robust_accuracy"]
    ra_cpu = on_cpu.metrics["robust_accuracy"][0]["robust_accuracy"]
    return {"device_name": torch.cuda.get_device_name(0), "param_device": str(next(gpu.model.parameters()).device),
            "result_device": on_gpu.device, "memory_format": gpu.memory_format, "batch_size": gpu.batch_size,
            "pgd_ra_gpu": ra_gpu, "pgd_ra_cpu": ra_cpu, "agree": abs(ra_gpu - ra_cpu) <= 3 / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=2048, help="synthetic images")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    out: dict = {"torch": torch.__version__, "device": args.device}
    if args.device.startswith("cuda"):
        out["cuda_checks"] = cuda_checks()
        print("CUDA checks:", out["cuda_checks"], flush=True)
    target, data = make_case(args.n, args.device)
    runs = {
        "PGD-10 (Bastion: fooled images leave the batch)": PGD(eps=EPS, steps=10, seed=0),
        "PGD-10, compaction off (every image, 10 passes)": PGD(eps=EPS, steps=10, seed=0, compact_every=11),
        "auto (APGD-CE, APGD-T, FAB-T, Square + checks)": AutoAttack(eps=EPS, seed=0),
    }
    rows = []
    for name, attack in runs.items():
        figures = timed_run(attack, target, data)
        rows.append({"attack": name, **figures})
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}, flush=True)
    out["rows"] = rows
    print(f"\n| attack ({args.n} images, {args.device}) | robust accuracy | seconds | images/s | passes/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['attack']} | {r['robust_accuracy']:.3f} | {r['seconds']:.2f} | {r['images_per_s']:.0f} | "
              f"{r['passes_per_s']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=lambda v: float(v) if isinstance(v, np.floating) else str(v))


if __name__ == "__main__":
    main()
