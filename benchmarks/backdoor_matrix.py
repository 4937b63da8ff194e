"""Backdoor detection matrix: every Bastion detector (and ART's, as the peer) on settings none was tuned on.

Grid: dataset (scikit-learn digits 1x8x8; Fashion-MNIST 1x28x28 from Debian's `dataset-fashion-mnist`, a seeded
subset) × attack (BadNets, Blended, WaNet, clean-label) × poison rate × architecture (a small CNN; a small
ResNet with batch norm and global average pooling) × seed. The seed draws the split, the target class
(= seed), the poison and the initialisation. Each cell trains one backdoored model; each (dataset, architecture,
seed) also trains a clean twin on the unpoisoned set.

Measures. Data screens (Activation Clustering deciding by the defender's clean set, by retraining and by
size/silhouette; Spectral Signatures, SPECTRE, Confusion Training; ART's ActivationDefence and
SpectralSignatureDefense on the same model, data and feature layer): TPR at FPR ≤ 0.1 of the scores and AUROC
against the known poison, TPR/FPR of the flags each method raises by itself (ART gives flags only: its "TPR@0.1"
is its flag TPR when its flag FPR is ≤ 0.1, else 0), and the classes a per-class screen names as poisoned.
Model-level detectors (Neural Cleanse, TABOR, MM-BD): whether they flag the true target and no other class on the
backdoored model, and whether they flag any class of the clean twin.

    OMP_NUM_THREADS=1 PYTHONPATH=src nice .peers-venv/bin/python benchmarks/backdoor_matrix.py \\
        [--datasets digits fashion] [--attacks badnets blended wanet clean-label] [--rates 0.01 0.05] \\
        [--archs cnn resnet mlp] [--seeds 0 1 2] [--screens ...] \\
        [--models nc nc-null nc-et nc-et99 tabor mm-bd] [--jsonl rows.jsonl]

Rows are appended to `--jsonl` as they are produced (a long run can be resumed: finished cells are skipped);
`--summary rows.jsonl` prints the Markdown tables of docs/benchmarks/poisoning.md from such a file.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bastion.attacks.backdoor.badnets import BadNets, Blended
from bastion.attacks.backdoor.base import PoisoningAttack
from bastion.attacks.backdoor.clean_label import CleanLabel
from bastion.attacks.backdoor.warping import WaNet
from bastion.core.data import Dataset
from bastion.core.image_data import read_idx
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer, seed_everything
from bastion.defenses.detect.activation_clustering import ActivationClustering
from bastion.defenses.detect.confusion import ConfusionTraining
from bastion.defenses.detect.mm_bd import MMBD
from bastion.defenses.detect.neural_cleanse import NeuralCleanse, confirmed
from bastion.defenses.detect.spectral import SpectralSignatures
from bastion.defenses.detect.spectre import Spectre
from bastion.defenses.detect.tabor import TABOR
from bastion.defenses.detect.trigger_region import region_keep
from bastion.demo.datasets import digits_with_clean_set
from bastion.demo.models import BasicBlock
from bastion.evaluation.metrics import auc, detection_rates, roc_curve, tpr_at_fpr

FASHION = Path("/usr/share/datasets/fashion-mnist")
EPOCHS = {"digits": 20, "fashion": 6}
FPR_BUDGET = 0.1


# -- data and models ---------------------------------------------------------------------------------------------
@cache
def dataset(name: str, seed: int, n_train: int) -> tuple[Dataset, Dataset, Dataset]:
    """(train, defender's clean set of 300, test) in [0, 1], shape (n, 1, h, w)."""
    if name == "digits":
        return digits_with_clean_set(seed)
    x = read_idx(FASHION / "train-images-idx3-ubyte.gz")[:, None].astype(np.float32) / 255.0
    y = read_idx(FASHION / "train-labels-idx1-ubyte.gz").astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))[: n_train + 300 + 1000]
    x, y = x[order], y[order]
    return (Dataset(x[:n_train], y[:n_train], "fashion-train"),
            Dataset(x[n_train:n_train + 300], y[n_train:n_train + 300], "fashion-clean"),
            Dataset(x[n_train + 300:], y[n_train + 300:], "fashion-test"))


def cnn(side: int) -> nn.Sequential:
    """Conv-ReLU-pool twice, then a 64-unit hidden layer (its input is the penultimate representation)."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * (side // 4) ** 2, 64), nn.ReLU(), nn.Linear(64, 10))


def resnet(side: int) -> nn.Sequential:
    """A 3x3 stem with batch norm, two residual blocks (the second strided), global average pooling, a linear head."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10))


def mlp(side: int) -> nn.Sequential:
    """A third architecture, no convolutions: two hidden layers of 128 and 64 units."""
    return nn.Sequential(nn.Flatten(), nn.Linear(side * side, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                         nn.Linear(64, 10))


ARCHS: dict[str, Callable[[int], nn.Sequential]] = {"cnn": cnn, "resnet": resnet, "mlp": mlp}


def attack_for(name: str, dataset_name: str, rate: float, target: int, seed: int, factory: Callable) -> PoisoningAttack:
    patch = 3 if dataset_name == "digits" else 4
    common = {"arch": factory, "poison_rate": rate, "target_label": target, "seed": seed,
              "epochs": EPOCHS[dataset_name]}
    if name == "badnets":
        return BadNets(patch_size=patch, **common)
    if name == "blended":
        return Blended(alpha=0.2, **common)
    if name == "wanet":
        return WaNet(strength=2.0 if dataset_name == "digits" else 0.5, cross_ratio=0.5, **common)
    return CleanLabel(eps=0.3 if dataset_name == "digits" else 16 / 255 * 2, patch_size=patch, **common)


def train(factory: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    seed_everything(seed)
    return Trainer(epochs=epochs, seed=seed, device="cpu").fit(factory(), x, y).eval()


@cache
def clean_twin(dataset_name: str, arch: str, seed: int, n_train: int) -> nn.Module:
    train_set, _, _ = dataset(dataset_name, seed, n_train)
    side = train_set.x.shape[-1]
    return train(lambda: ARCHS[arch](side), torch.as_tensor(train_set.x), torch.as_tensor(train_set.y),
                 EPOCHS[dataset_name], seed)


def backdoored(dataset_name: str, attack_name: str, rate: float, arch: str, seed: int, n_train: int) -> dict:
    """Poison the training set, train on it; the model, data, ground truth, clean accuracy and attack success."""
    train_set, _, test = dataset(dataset_name, seed, n_train)
    side, target = train_set.x.shape[-1], seed % 10
    factory = lambda: ARCHS[arch](side)  # noqa: E731
    attack = attack_for(attack_name, dataset_name, rate, target, seed, factory)
    attack.bounds_, attack.n_classes_ = (0.0, 1.0), 10
    x, y = torch.as_tensor(train_set.x), torch.as_tensor(train_set.y)
    attack.prepare(factory, x, y)
    poisoned = attack.poison(x, y, rate, torch.Generator().manual_seed(seed))
    model = train(factory, poisoned.x, poisoned.y, EPOCHS[dataset_name], seed)
    xt, yt = torch.as_tensor(test.x), torch.as_tensor(test.y)
    trig_x, trig_y = attack.triggered(xt, yt)
    with torch.no_grad():
        ca = float((model(xt).argmax(-1) == yt).float().mean())
        asr = float((model(trig_x).argmax(-1) == trig_y).float().mean())
    return {"model": model, "data": poisoned.to_dataset(), "truth": poisoned.is_poison.numpy(), "target": target,
            "clean_accuracy": ca, "attack_success_rate": asr}


# -- detectors ---------------------------------------------------------------------------------------------------
def score_rates(scores: np.ndarray, truth: np.ndarray) -> dict:
    fpr, tpr = roc_curve(scores[truth], scores[~truth])
    return {"tpr@0.1": tpr_at_fpr(fpr, tpr, FPR_BUDGET), "auroc": auc(fpr, tpr)}


def art_classifier(model: nn.Module, side: int) -> object:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, side, side), nb_classes=10,
                             clip_values=(0.0, 1.0))


def art_flags(kind: str, model: nn.Module, data: Dataset, rate: float) -> np.ndarray:
    """ART's detector on the model truncated at the layer Bastion reads (its features), flags only."""
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense

    cut = next(i for i, m in enumerate(model) if isinstance(m, nn.Flatten)) + 1
    classifier = art_classifier(model[:cut], data.x.shape[-1])
    labels = np.eye(10)[data.y]
    if kind == "ac":
        _, is_clean = ActivationDefence(classifier, data.x, labels).detect_poison(nb_clusters=2, nb_dims=10,
                                                                                   reduce="PCA")
    else:
        _, is_clean = SpectralSignatureDefense(classifier, data.x, labels, batch_size=128, eps_multiplier=1.5,
                                               expected_pp_poison=max(rate, 0.05)).detect_poison()
    return np.asarray(is_clean) == 0


SCREENS: dict[str, Callable[[int, float], object]] = {
    "ac": lambda seed, rate: ActivationClustering(seed=seed),  # decides with the defender's clean set
    "ac-reclassify": lambda seed, rate: ActivationClustering(trusted=False, seed=seed),
    "ac-silhouette": lambda seed, rate: ActivationClustering(trusted=False, reclassify=False, seed=seed),
    "spectral": lambda seed, rate: SpectralSignatures(eps=max(rate, 0.05)),
    "spectre": lambda seed, rate: Spectre(seed=seed),
    "confusion": lambda seed, rate: None,  # built in `screen`: it needs the epochs of the victim
    "art-ac": lambda seed, rate: None,
    "art-ss": lambda seed, rate: None,
}


def screen(method: str, cell: dict, clean: Dataset, seed: int, rate: float, epochs: int) -> dict:
    target = TorchTarget(cell["model"], tuple(cell["data"].x.shape[1:]), device="cpu")
    start = time.perf_counter()
    if method.startswith("art-"):
        flags = art_flags(method[4:], cell["model"], cell["data"], rate)
        rates = detection_rates(flags, cell["truth"])
        out = {"tpr@0.1": rates["tpr"] if rates["fpr"] <= FPR_BUDGET else 0.0, "auroc": None}
    else:
        defense = (ConfusionTraining(pretrain_epochs=epochs, seed=seed) if method == "confusion"
                   else SCREENS[method](seed, rate))
        named = defense.run(target, clean, train_data=cell["data"]).metrics.get("poisoned_classes")
        flags = defense.flagged_
        rates = detection_rates(flags, cell["truth"])
        out = {**score_rates(defense.scores_, cell["truth"]), "named": named}
    return {**out, "flag_tpr": rates["tpr"], "flag_fpr": rates["fpr"], "seconds": time.perf_counter() - start}


MODEL_SCANS: dict[str, Callable[[int], object]] = {
    "nc": lambda seed: NeuralCleanse(seed=seed, decision="mad", confirm="none"),  # the paper's MAD index
    # Xiang et al.'s reciprocal-norm null, unconfirmed
    "nc-null": lambda seed: NeuralCleanse(seed=seed, decision="null", confirm="none"),
    # the null's flags confirmed by expected transferability (Xiang et al., ICLR 2022): the paper's minimal one-image
    # trigger, and the variant whose one-image trigger must reach softmax 0.99 (docs/benchmarks/poisoning.md §7.5)
    "nc-et": lambda seed: NeuralCleanse(seed=seed, decision="null", confirm="et"),
    # the null's flags confirmed by the trigger-region test (Bastion's own, §7.6): Neural Cleanse's default
    "nc-region": lambda seed: NeuralCleanse(seed=seed),
    "nc-et99": lambda seed: NeuralCleanse(seed=seed, decision="null", confirm="et", confirm_min_prob=0.99),
    # the default calibrated by a known-clean reference (the clean twin of the run's next seed; `model_scans`)
    "nc-ref": lambda seed: NeuralCleanse(seed=seed),
    "tabor": lambda seed: TABOR(seed=seed),
    "mm-bd": lambda seed: MMBD(seed=seed),
}


NC_RULES = ("nc", "nc-null", "nc-et", "nc-region")  # decisions on the same reverse-engineered triggers


def model_scans(methods: list[str], model: nn.Module, clean: Dataset, seed: int,
                reference: Callable[[], nn.Module] | None = None) -> tuple[dict[str, list[int]], dict]:
    """Each method's flagged classes. The rules in NC_RULES share one Neural Cleanse run (same seed, so the same
    triggers as separate runs): its metrics report the MAD's flags, the null's, and the ET-confirmed ones; the
    trigger-region confirmation is computed from the same run's masks. Also returned: that run's per-class mask
    norms and every class's region keep, from which `--summary` computes the reference-calibrated rule."""
    target = TorchTarget(model, tuple(clean.x.shape[1:]), n_classes=10, device="cpu")
    flags: dict[str, list[int]] = {}
    detail: dict = {}
    shared = [m for m in methods if m in NC_RULES]
    if shared:
        confirm = "et" if "nc-et" in shared else "none"
        scan = NeuralCleanse(seed=seed, decision="null", confirm=confirm)
        metrics = scan.run(target, clean).metrics
        null = [metrics["null_top_class"]] if metrics["null_p_value"] < metrics["significance"] else []
        decided = {"nc": metrics["mad_flagged"], "nc-null": null, "nc-et": metrics["flagged_classes"]}
        x, y = torch.as_tensor(clean.x), torch.as_tensor(clean.y)
        keep = {c: region_keep(model.eval(), x, y, c, scan.masks_[c], seed=seed) for c in range(10)}
        decided["nc-region"] = [c for c in null if confirmed(c, None, keep)]
        flags.update({m: decided[m] for m in shared})
        detail = {"mask_l1": metrics["mask_l1"], "null_p_value": metrics["null_p_value"],
                  "region_keep": [None if np.isnan(v) else v for v in keep.values()]}
    for method in methods:
        if method == "nc-ref":  # the library's reference calibration, the clean twin of the run's next seed
            assert reference is not None
            ref = TorchTarget(reference(), tuple(clean.x.shape[1:]), n_classes=10, device="cpu")
            flags[method] = NeuralCleanse(seed=seed, reference=ref).run(target, clean).metrics["flagged_classes"]
        elif method not in NC_RULES:
            flags[method] = MODEL_SCANS[method](seed).run(target, clean).metrics["flagged_classes"]
    return {m: flags[m] for m in methods}, detail


# -- the grid ----------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> None:
    out = Path(args.jsonl)
    done = set()
    if out.exists():
        done = {json.dumps(r["cell"], sort_keys=True) for r in map(json.loads, out.read_text().splitlines())}
    for ds in args.datasets:
        for arch in args.archs:
            for seed in args.seeds:
                _, clean, _ = dataset(ds, seed, args.n_train)
                ref_seed = next((s for s in sorted(args.seeds) if s > seed), min(args.seeds))
                reference = partial(clean_twin, ds, arch, ref_seed, args.n_train)
                twin_cell = {"dataset": ds, "arch": arch, "seed": seed, "attack": "clean", "rate": 0.0}
                if args.models and json.dumps(twin_cell, sort_keys=True) not in done:
                    twin = clean_twin(ds, arch, seed, args.n_train)
                    flags, detail = model_scans(args.models, twin, clean, seed, reference)
                    row = {"cell": twin_cell, "models": flags, "nc": detail}
                    emit(out, row)
                for attack in args.attacks:
                    for rate in args.rates:
                        cell_id = {"dataset": ds, "arch": arch, "seed": seed, "attack": attack, "rate": rate}
                        if json.dumps(cell_id, sort_keys=True) in done:
                            continue
                        cell = backdoored(ds, attack, rate, arch, seed, args.n_train)
                        row = {"cell": cell_id, "target": cell["target"], "clean_accuracy": cell["clean_accuracy"],
                               "attack_success_rate": cell["attack_success_rate"],
                               "n_poison": int(cell["truth"].sum()),
                               "screens": {m: screen(m, cell, clean, seed, rate, EPOCHS[ds]) for m in args.screens}}
                        row["models"], row["nc"] = model_scans(args.models, cell["model"], clean, seed, reference)
                        emit(out, row)


def emit(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    c = row["cell"]
    screens = " ".join(f"{m}={s['tpr@0.1']:.2f}" for m, s in row.get("screens", {}).items())
    print(f"{c['dataset']} {c['arch']} s{c['seed']} {c['attack']} {c['rate']:.0%} "
          f"ASR={row.get('attack_success_rate', float('nan')):.2f} {screens} models={row['models']}", flush=True)


def model_line(name: str, decided: list[tuple[dict, list[int]]]) -> str:
    """One model-level rule: clean twins flagged, exact targets on working BadNets/Blended, per dataset."""
    parts = []
    for ds in sorted({r["cell"]["dataset"] for r, _ in decided}):
        mine = [(r, f) for r, f in decided if r["cell"]["dataset"] == ds]
        twins = [f for r, f in mine if r["cell"]["attack"] == "clean"]
        patch = [f == [r["target"]] for r, f in mine if r["cell"]["attack"] in ("badnets", "blended")
                 and r["attack_success_rate"] >= 0.8]
        parts.append(f"{ds}: {sum(map(bool, twins))}/{len(twins)} clean flagged, {sum(patch)}/{len(patch)} exact")
    return f"{name}: " + "; ".join(parts)


def summary(path: Path) -> None:
    """Markdown tables: per (dataset, attack, rate) means over seeds and architectures; targets met."""
    from common import table

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    cells = [r for r in rows if r["cell"]["attack"] != "clean"]
    methods = list(cells[0]["screens"]) if cells else []
    out = []
    groups: dict[tuple, list[dict]] = {}
    for r in cells:
        groups.setdefault((r["cell"]["dataset"], r["cell"]["attack"], r["cell"]["rate"]), []).append(r)
    for (ds, attack, rate), group in sorted(groups.items()):
        line = {"dataset": ds, "attack": attack, "rate": f"{rate:.0%}", "cells": len(group),
                "ASR": f"{np.mean([g['attack_success_rate'] for g in group]):.2f}"}
        for m in methods:
            tpr = np.mean([g["screens"][m]["tpr@0.1"] for g in group])
            aurocs = [g["screens"][m]["auroc"] for g in group if g["screens"][m]["auroc"] is not None]
            line[m] = f"{tpr:.2f}" + (f" ({np.mean(aurocs):.2f})" if aurocs else "")
        out.append(line)
    print(table(out, list(out[0]) if out else []))
    bastion = [m for m in methods if not m.startswith("art-")]
    target_cells = [r for r in cells if r["cell"]["attack"] in ("badnets", "blended")]
    if target_cells and bastion:
        best = [max(r["screens"][m]["tpr@0.1"] for m in bastion) for r in target_cells]
        print(f"\nBest Bastion screen TPR ≥ 0.8 at FPR ≤ 0.1: {np.mean(np.array(best) >= 0.8):.0%} of "
              f"{len(best)} BadNets/Blended cells")
    art = [m for m in methods if m.startswith("art-")]
    if art and bastion:
        worse = [r["cell"] for r in cells
                 if max(r["screens"][m]["tpr@0.1"] for m in bastion) < max(r["screens"][m]["tpr@0.1"] for m in art)]
        print(f"Cells where ART's best beats Bastion's best: {len(worse)} of {len(cells)} {worse}")
    for m in bastion:
        named = [r for r in target_cells if r["screens"][m].get("named") is not None]
        if named:
            exact = np.mean([r["screens"][m]["named"] == [r["target"]] for r in named])
            print(f"{m}: names exactly the true target class on {exact:.0%} of {len(named)} BadNets/Blended cells; "
                  f"flag FPR mean {np.mean([r['screens'][m]['flag_fpr'] for r in named]):.3f}")
    for m in (cells[0]["models"] if cells else []):
        hits = [r["models"][m] == [r["target"]] for r in cells]
        by_attack = {a: f"{np.mean([h for h, r in zip(hits, cells, strict=True) if r['cell']['attack'] == a]):.0%}"
                     for a in sorted({r["cell"]["attack"] for r in cells})}
        twins = [r for r in rows if r["cell"]["attack"] == "clean"]
        false = sum(bool(r["models"].get(m)) for r in twins)
        planted = [h for h, r in zip(hits, cells, strict=True) if r["attack_success_rate"] >= 0.8]
        patch = [h for h, r in zip(hits, cells, strict=True)
                 if r["attack_success_rate"] >= 0.8 and r["cell"]["attack"] in ("badnets", "blended")]
        print(f"{m}: exactly the true target on {np.mean(hits):.0%} of {len(hits)} backdoored models {by_attack} "
              f"({np.mean(planted) if planted else float('nan'):.0%} of the {len(planted)} with ASR >= 0.8; "
              f"{sum(patch)} of the {len(patch)} BadNets/Blended ones); {false} of {len(twins)} clean twins flagged")
    names = list(dict.fromkeys(m for r in rows for m in r.get("models", {})))
    decided = {m: [(r, r["models"][m]) for r in rows if m in r.get("models", {})] for m in names}
    for name, rule in {**{m: d for m, d in decided.items() if d}, **reference_rules(rows)}.items():
        print(model_line(name, rule))


def reference_rules(rows: list[dict]) -> dict[str, list[tuple[dict, list[int]]]]:
    """Neural Cleanse calibrated by known-clean reference models of the same task, from the stored norms: the
    suspect's mask norm of each class divided by the geometric mean of the references' norms of that class, and
    Xiang et al.'s null on those ratios. "nc-ref-*": flagged where the null on the norms and the null on the ratios
    flag the same class and the trigger-region test confirms it; "nc-ref-ratio": the null on the ratios alone,
    confirmed. References: the clean twin of the same dataset and architecture with the next seed of the run
    (cyclic; "-1ref"), or those of every other seed ("-allref"). Rows without stored norms are skipped."""
    from bastion.defenses.detect.neural_cleanse import null_decision
    from bastion.defenses.detect.trigger_region import THRESHOLD

    twins = {(r["cell"]["dataset"], r["cell"]["arch"], r["cell"]["seed"]): np.asarray(r["nc"]["mask_l1"])
             for r in rows if r["cell"]["attack"] == "clean" and r.get("nc")}
    out: dict[str, list[tuple[dict, list[int]]]] = {}
    for r in rows:
        key = (r["cell"]["dataset"], r["cell"]["arch"])
        seeds = sorted(s for d, a, s in twins if (d, a) == key)
        if not r.get("nc") or len(seeds) < 2:
            continue
        others = [s for s in seeds if s != r["cell"]["seed"]]
        nxt = next((s for s in seeds if s > r["cell"]["seed"]), seeds[0])
        norms, keep = np.asarray(r["nc"]["mask_l1"]), r["nc"]["region_keep"]
        held = [c for c in null_decision(norms, 0.05)[0] if keep[c] is None or keep[c] > THRESHOLD]
        for refs, tag in (([nxt if nxt != r["cell"]["seed"] else others[0]], "1ref"), (others, "allref")):
            reference = np.exp(np.mean([np.log(np.maximum(twins[(*key, s)], 1e-6)) for s in refs], axis=0))
            ratio = [c for c in null_decision(norms / np.maximum(reference, 1e-6), 0.05)[0]
                     if keep[c] is None or keep[c] > THRESHOLD]
            out.setdefault(f"nc-ref-{tag}", []).append((r, [c for c in held if c in ratio]))
            out.setdefault(f"nc-ref-ratio-{tag}", []).append((r, ratio))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion"], choices=["digits", "fashion"])
    parser.add_argument("--attacks", nargs="+", default=["badnets", "blended", "wanet", "clean-label"],
                        choices=["badnets", "blended", "wanet", "clean-label"])
    parser.add_argument("--rates", nargs="+", type=float, default=[0.01, 0.05])
    parser.add_argument("--archs", nargs="+", default=["cnn", "resnet"], choices=list(ARCHS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--screens", nargs="*", default=list(SCREENS), choices=list(SCREENS))
    parser.add_argument("--models", nargs="*", default=["nc", "mm-bd"], choices=list(MODEL_SCANS))
    parser.add_argument("--n-train", type=int, default=3000,
                        help="Fashion-MNIST training subset size (issue 20's setting: 6000)")
    parser.add_argument("--jsonl", default="backdoor_matrix.jsonl")
    parser.add_argument("--summary", metavar="JSONL", help="print the tables of a finished run and exit")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.summary:
        summary(Path(args.summary))
    else:
        run(args)


if __name__ == "__main__":
    main()
