"""Evasion: Bastion against torchattacks, Foolbox 3, ART and the AutoAttack reference code, same models and data.

Run with the peers' environment (the peers are never Bastion dependencies):

    PYTHONPATH=src .peers-venv/bin/python benchmarks/evasion_peers.py [--sections pgd,auto,eps] [--n 540]

Models: the demo digits CNN (1x8x8 in [0, 1], trained like `bastion demo`) and the same architecture
adversarially trained with PGD (Madry et al.) at L∞ eps 0.1, both cached after the first run. Data: the demo
digits test split (540 points), one call for every tool (Bastion picks its own CPU batch size and layout,
on its own copy of the model; the peers get the model as it is). Every robust accuracy is judged the same way for every
tool: an example counts only if it is finite, inside [0, 1] and within eps in float32, and the model misclassifies
it. Times are CPU seconds of the process (one torch thread by default), robust to other jobs on the machine.

Sections:
  pgd   PGD L∞ at equal steps (20) and step size (2.5·eps/20), one random start: robust accuracy and seconds
  auto  Bastion `auto` (with its sanity checks) against AutoAttack "standard" (APGD-CE, APGD-T, FAB-T, Square)
  eps   five epsilons in one call against one: Bastion PGD and `auto`, Foolbox PGD (which takes a list of eps)
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from common import table
from torch import nn

from bastion.attacks.evasion.auto import AutoAttack
from bastion.attacks.evasion.gradient import PGD
from bastion.core.data import Dataset
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer, accuracy
from bastion.demo.cache import cache_dir
from bastion.demo.datasets import digits
from bastion.demo.models import digits_cnn

EPS, STEPS = 0.1, 20
FIVE = [0.05, 0.075, 0.1, 0.125, 0.15]


def models(train: Dataset) -> dict[str, nn.Module]:
    """The demo CNN and a PGD-trained CNN, trained once and cached (weights only, loaded with weights_only)."""
    folder = cache_dir() / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("demo-cnn", "pgd-trained-cnn"):
        path = folder / f"evasion-{name}-torch{torch.__version__.split('+')[0]}.pt"
        model = digits_cnn()
        if path.exists():
            model.load_state_dict(torch.load(path, weights_only=True))
        else:
            hook = None
            if name == "pgd-trained-cnn":
                attack = PGD(eps=EPS, steps=5, seed=0)

                def hook(m, xb, yb, epoch, attack=attack):
                    m.eval()
                    target = TorchTarget(m, xb.shape[1:], n_classes=10, device="cpu")
                    return attack.perturb(target, xb, yb, EPS).detach(), yb
            Trainer(epochs=15, batch_size=64, lr=2e-3, seed=0, device="cpu", batch_hook=hook).fit(
                model, train.x, train.y)
            torch.save(model.state_dict(), path)
        out[name] = model.eval()
    return out


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, eps: float) -> float:
    """The same judge for every tool: invalid examples (outside eps or [0, 1], not finite) never count."""
    adv = adv.detach().float().cpu()
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        fooled = model(adv).argmax(1) != y
    flat = adv.reshape(len(adv), -1)
    valid = torch.isfinite(flat).all(1) & (flat >= -1e-6).all(1) & (flat <= 1 + 1e-6).all(1)
    valid &= (adv - x).reshape(len(x), -1).abs().amax(1) <= eps * (1 + 1e-5) + 1e-7
    return float((clean & ~(fooled & valid)).float().mean())


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """The result and the CPU seconds of the process (robust to other jobs sharing the machine)."""
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


# -- the peers -------------------------------------------------------------------------------------------------
def peer_pgd(tool: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int = 0):
    alpha = 2.5 * eps / STEPS
    torch.manual_seed(seed)
    np.random.seed(seed)
    if tool == "torchattacks":
        import torchattacks

        return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=STEPS, random_start=True)(x, y)
    if tool == "foolbox":
        import foolbox as fb

        attack = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=STEPS, random_start=True)
        _, clipped, _ = attack(fb.PyTorchModel(model, bounds=(0, 1)), x, y, epsilons=eps)
        return clipped
    if tool == "art":
        from art.attacks.evasion import ProjectedGradientDescentPyTorch
        from art.estimators.classification import PyTorchClassifier

        clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
                                clip_values=(0.0, 1.0), device_type="cpu")
        attack = ProjectedGradientDescentPyTorch(clf, norm=np.inf, eps=eps, eps_step=alpha, max_iter=STEPS,
                                                 num_random_init=1, batch_size=len(x), verbose=False)
        return torch.from_numpy(attack.generate(x.numpy(), y.numpy()))
    raise ValueError(tool)


def bastion_target(model: nn.Module) -> TorchTarget:
    """A Bastion target with its defaults, on its own copy of the model: on CPU it converts a convolutional model
    to channels-last (verified) and picks cache-sized batches, which must not leak into the peers' runs."""
    return TorchTarget(copy.deepcopy(model), (1, 8, 8), n_classes=10, device="cpu")


def bastion_pgd(model: nn.Module, data: Dataset, eps, seed: int = 0) -> tuple[list[float], float]:
    target = bastion_target(model)
    result, secs = timed(lambda: PGD(eps=eps, steps=STEPS, seed=seed).run(target, data))
    return [c["robust_accuracy"] for c in result.metrics["robust_accuracy"]], secs


def bastion_auto(model: nn.Module, data: Dataset, eps):
    target = bastion_target(model)
    return timed(lambda: AutoAttack(eps=eps, seed=0).run(target, data))


def hand_tuned_torchattacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, chunk: int):
    """What a torchattacks user gets by doing Bastion's CPU choices by hand: a channels-last copy of the model and
    chunks of `chunk` points (informational: not the peer as shipped)."""
    tuned = copy.deepcopy(model).to(memory_format=torch.channels_last)
    pairs = zip(x.split(chunk), y.split(chunk), strict=True)
    return torch.cat([peer_pgd("torchattacks", tuned, xc, yc, EPS, seed) for xc, yc in pairs])


def section_pgd(nets: dict[str, nn.Module], data: Dataset, x: torch.Tensor, y: torch.Tensor, seeds: int) -> None:
    print(f"\n## PGD L∞, eps {EPS}, {STEPS} steps, step 2.5·eps/{STEPS}, 1 random start, {len(x)} points; "
          f"robust accuracy = mean over {seeds} seeds, CPU seconds = median\n")
    rows = []
    for name, model in nets.items():
        row = {"model": name, "clean": accuracy(model, x, y)}
        best_peer, fastest = 1.0, float("inf")
        for tool in ("torchattacks", "foolbox", "art"):
            try:
                runs = [timed(lambda tool=tool, s=s, m=copy.deepcopy(model): peer_pgd(tool, m, x, y, EPS, s))
                        for s in range(seeds)]
                ra = float(np.mean([robust_accuracy(model, x, y, adv, EPS) for adv, _ in runs]))
                secs = float(np.median([t for _, t in runs]))
                row[tool] = f"{ra:.4f} / {secs:.2f}s"
                best_peer, fastest = min(best_peer, ra), min(fastest, secs)
            except Exception as exc:  # a peer that fails is reported, not hidden
                row[tool] = f"failed: {type(exc).__name__}"
        runs = [bastion_pgd(model, data, EPS, s) for s in range(seeds)]
        ra = float(np.mean([r[0][0] for r in runs]))
        secs = float(np.median([r[1] for r in runs]))
        row["bastion"] = f"{ra:.4f} / {secs:.2f}s"
        row["RA − best peer (points)"] = f"{100 * (ra - best_peer):+.2f}"
        row["time / fastest peer"] = f"{secs / fastest:.2f}"
        chunk = bastion_target(model).batch_size
        tuned = [timed(lambda s=s, m=model, c=chunk: hand_tuned_torchattacks(m, x, y, s, c)) for s in range(seeds)]
        tuned_secs = float(np.median([t for _, t in tuned]))
        row["torchattacks hand-tuned (info)"] = f"{tuned_secs:.2f}s, bastion / it {secs / tuned_secs:.2f}"
        rows.append(row)
    print(table(rows, ["model", "clean", "torchattacks", "foolbox", "art", "bastion", "RA − best peer (points)",
                       "time / fastest peer", "torchattacks hand-tuned (info)"]))


def section_auto(nets: dict[str, nn.Module], data: Dataset, x: torch.Tensor, y: torch.Tensor, seeds: int) -> None:
    print(f"\n## `auto` (sanity checks included) against AutoAttack standard, L∞ eps {EPS}, {len(x)} points\n")
    from pyautoattack import AutoAttack as Reference

    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    rows = []
    for name, model in nets.items():
        reference = Reference(copy.deepcopy(model), norm="Linf", eps=EPS, version="standard", device="cpu", seed=0)
        (adv, _), ref_secs = timed(lambda reference=reference: reference.run_standard_evaluation(
            x, y, batch_size=len(x)))
        ref_ra = robust_accuracy(model, x, y, adv, EPS)
        result, secs = bastion_auto(model, data, EPS)
        ra = result.metrics["robust_accuracy"][0]["robust_accuracy"]
        failed = [c["id"] for c in result.metrics["sanity_checks"] if not c["passed"]]
        rows.append({"model": name, "AutoAttack RA": ref_ra, "AutoAttack s": ref_secs, "bastion auto RA": ra,
                     "bastion auto s": secs, "RA − AA (points)": f"{100 * (ra - ref_ra):+.2f}",
                     "time / AA": f"{secs / ref_secs:.2f}", "failed checks": failed or "none",
                     "broken per stage": result.metrics["stages"]})
    print(table(rows, ["model", "AutoAttack RA", "AutoAttack s", "bastion auto RA", "bastion auto s",
                       "RA − AA (points)", "time / AA", "failed checks", "broken per stage"]))


def section_eps(nets: dict[str, nn.Module], data: Dataset, x: torch.Tensor, y: torch.Tensor, seeds: int) -> None:
    print(f"\n## Five epsilons {FIVE} in one call against one (eps {EPS}), {len(x)} points, CPU seconds\n")
    import foolbox as fb

    rows = []
    for name, model in nets.items():
        curve, five = bastion_pgd(model, data, FIVE)
        singles = {e: bastion_pgd(model, data, e) for e in FIVE}
        one = singles[EPS][1]
        auto_one = bastion_auto(model, data, EPS)[1]
        auto_five, auto_five_secs = bastion_auto(model, data, FIVE)
        fmodel = fb.PyTorchModel(copy.deepcopy(model), bounds=(0, 1))
        attack = fb.attacks.LinfPGD(rel_stepsize=2.5 / STEPS, steps=STEPS, random_start=True)
        _, fb_one = timed(lambda attack=attack, fmodel=fmodel: attack(fmodel, x, y, epsilons=EPS))
        _, fb_five = timed(lambda attack=attack, fmodel=fmodel: attack(fmodel, x, y, epsilons=FIVE))
        rows.append({
            "model": name,
            "bastion PGD RA (5 eps, one call)": " ".join(f"{v:.3f}" for v in curve),
            "bastion PGD RA (one eps per call)": " ".join(f"{singles[e][0][0]:.3f}" for e in FIVE),
            "PGD 5 / 1": f"{five / one:.2f}",
            "PGD 5 / mean of singles": f"{five / np.mean([v[1] for v in singles.values()]):.2f}",
            "auto RA (5 eps)": " ".join(f"{c['robust_accuracy']:.3f}" for c in auto_five.metrics["robust_accuracy"]),
            "auto 5 / 1": f"{auto_five_secs / auto_one:.2f}",
            "foolbox PGD 5 / 1": f"{fb_five / fb_one:.2f}",
        })
    print(table(rows, list(rows[0])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="pgd,auto,eps")
    parser.add_argument("--n", type=int, default=540, help="test points (the demo test split has 540)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (timings are CPU seconds)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the PGD comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = digits(0)
    test = test.subset(slice(0, args.n))
    nets = models(train)
    x, y = torch.as_tensor(test.x), torch.as_tensor(test.y)
    print(f"torch {torch.__version__}, {args.threads} threads, {len(x)} digits test points")
    sections = {"pgd": section_pgd, "auto": section_auto, "eps": section_eps}
    for name in args.sections.split(","):
        sections[name](nets, test, x, y, args.seeds)


if __name__ == "__main__":
    main()
