"""LM membership benchmark: a tiny GPT-2 fine-tuned on Python standard-library docstrings (offline), a reference LM
trained on disjoint docstrings; TPR at 1% FPR and AUC (bootstrap 95% intervals) of each LLM membership score.

    .venv/bin/python benchmarks/llm_membership.py [--records 500] [--epochs 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import platform
import sys
import time

import numpy as np
import torch

from bastion.attacks.llm.membership import LMMembership
from bastion.lm.tiny import TinyLM, char_tokenizer

MODULES = ["collections", "json", "os", "re", "string", "textwrap", "inspect", "pathlib", "argparse", "logging",
           "email", "http", "urllib", "xml", "asyncio", "unittest", "typing", "functools", "itertools", "shutil",
           "subprocess", "tarfile", "zipfile", "csv", "decimal", "fractions", "statistics", "random", "datetime",
           "calendar", "difflib", "pickletools", "tokenize", "ast", "dis", "importlib", "sqlite3", "socket", "ssl"]


def docstring_records(length: int = 96) -> list[str]:
    """Distinct docstring paragraphs of the standard library, cut to `length` characters, ASCII only."""
    seen: set[str] = set()
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects = [module]
        if hasattr(module, "__path__"):
            for info in pkgutil.iter_modules(module.__path__, name + "."):
                if info.name.endswith("__main__"):
                    continue
                try:
                    objects.append(importlib.import_module(info.name))
                except Exception:  # noqa: BLE001 - optional submodules (platform-specific) are skipped
                    continue
        for mod in list(objects):
            objects.extend(v for _, v in inspect.getmembers(mod) if inspect.isclass(v) or inspect.isfunction(v))
        for obj in objects:
            for para in (inspect.getdoc(obj) or "").split("\n\n"):
                text = " ".join(para.split())[:length]
                if len(text) >= length // 2 and text.isascii():
                    seen.add(text)
    return sorted(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500, help="members (= non-members)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    records = docstring_records()
    order = np.random.default_rng(args.seed).permutation(len(records))
    n = args.records
    if len(records) < 4 * n:
        sys.exit(f"only {len(records)} docstring records; need {4 * n}")
    members = [records[i] for i in order[:n]]
    nonmembers = [records[i] for i in order[n:2 * n]]
    ref_data = [records[i] for i in order[2 * n:4 * n]]  # disjoint from both
    tok = char_tokenizer(records)
    shape = {"n_layer": 2, "n_embd": 128, "n_head": 4, "block": 100, "seed": args.seed}
    target = TinyLM(epochs=args.epochs, **shape).train(members, tokenizer=tok)
    reference = TinyLM(epochs=max(1, args.epochs // 2), **shape).train(ref_data, tokenizer=tok)
    result = LMMembership(n_bootstrap=500, seed=args.seed).run(target, members=members, nonmembers=nonmembers,
                                                              reference=reference)
    rows = {}
    for name, m in result.metrics["scores"].items():
        t1 = next(r for r in m["tpr_at_fpr"] if abs(r["fpr"] - 0.01) < 1e-12)
        rows[name] = {"tpr_at_1pct_fpr": t1["tpr"], "tpr_ci": t1["ci"], "auc": m["auc"], "auc_ci": m["auc_ci"]}
        print(f"{name:10s} TPR@1%FPR {t1['tpr']:.3f} [{t1['ci'][0]:.3f}, {t1['ci'][1]:.3f}]   "
              f"AUC {m['auc']:.3f} [{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}]")
    ratio = rows["reference"]["tpr_at_1pct_fpr"] / max(rows["loss"]["tpr_at_1pct_fpr"], 1e-9)
    seconds = time.perf_counter() - start
    print(f"records: {len(records)} docstrings, {n} members / {n} non-members / {2 * n} reference; "
          f"reference/LOSS TPR@1%FPR = {ratio:.2f}x; {seconds:.0f} s on {platform.processor() or platform.machine()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"scores": rows, "ratio": ratio, "seconds": seconds, "args": vars(args)}, fh, indent=1)


if __name__ == "__main__":
    main()
