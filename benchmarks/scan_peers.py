"""Supply-chain scanners side by side: Bastion vs modelscan, picklescan and fickling on one corpus.

Run with the peers' environment and Bastion's sources:
    PYTHONPATH=src .peers-venv/bin/python benchmarks/scan_peers.py [--repeat 3]

The corpus is tests/scan_corpus.py (malicious files assembled opcode by opcode, never executed, including the
bypasses of issue 14, plus ordinary files made by torch, scikit-learn, NumPy, safetensors, skops). Prints a
detection table (F flagged, . clean, E error without a verdict), detection and false-alarm counts, flagged counts
per group, and wall time per tool with its ratio to Bastion.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.scan_corpus import Case, benign_cases, bypass_cases, malicious_cases, write_cases  # noqa: E402


def bastion_scan(path: Path) -> str:
    from bastion.supplychain import scan_path

    report = scan_path(path)
    if report.errors:
        return "E"
    return "." if report.is_clean(min_severity="medium") else "F"


def bastion_nohash_scan(path: Path) -> str:
    from bastion.supplychain import scan_path

    report = scan_path(path, digest=False)
    if report.errors:
        return "E"
    return "." if report.is_clean(min_severity="medium") else "F"


def modelscan_scan(path: Path) -> str:
    from modelscan.modelscan import ModelScan

    result = ModelScan().scan(path)
    if result.get("issues"):
        return "F"
    return "E" if result.get("errors") else "."


def picklescan_scan(path: Path) -> str:
    from picklescan.scanner import scan_file_path

    result = scan_file_path(str(path))
    if result.issues_count or result.infected_files:
        return "F"
    return "E" if result.scan_err else "."


def fickling_scan(path: Path) -> str:
    import fickling

    try:
        result = fickling.scan_file(str(path), graceful=True)
    except Exception:  # noqa: BLE001 - a peer crashing on a file counts as an error, not a verdict
        return "E"
    if not result.is_safe:
        return "F"
    return "E" if result.errors else "."


TOOLS: dict[str, Callable[[Path], str]] = {
    "bastion": bastion_scan, "modelscan": modelscan_scan, "picklescan": picklescan_scan, "fickling": fickling_scan,
}


def run_tool(scan: Callable[[Path], str], paths: list[Path], repeat: int = 1) -> tuple[list[str], float]:
    """Verdicts, and the sum over files of each file's best time out of `repeat` runs (robust to noise)."""
    verdicts, total = [], 0.0
    for path in paths:
        best = float("inf")
        for _ in range(repeat):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                started = time.perf_counter()
                try:
                    verdict = scan(path)
                except Exception:  # noqa: BLE001
                    verdict = "E"
                best = min(best, time.perf_counter() - started)
        verdicts.append(verdict)
        total += best
    return verdicts, total


def big_files(folder: Path) -> list[Path]:
    """Larger ordinary files for throughput: a ~90 MB torch state dict and a 200-tree random forest."""
    import joblib
    import torch
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    state = {f"layer{i}.weight": torch.randn(1024, 1024) for i in range(22)}
    torch.save(state, folder / "big_state_dict.pt")
    x, y = load_digits(return_X_y=True)
    joblib.dump(RandomForestClassifier(200, random_state=0, n_jobs=1).fit(x, y), folder / "forest200.joblib")
    return [folder / "big_state_dict.pt", folder / "forest200.joblib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per file (each file's best time counts)")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    folder = Path(tempfile.mkdtemp(prefix="scan-peers-"))
    malicious: list[Case] = malicious_cases() + bypass_cases()
    benign: list[Case] = list(benign_cases())
    mal_paths = write_cases(malicious, folder / "malicious")
    ben_paths = write_cases(benign, folder / "benign")
    paths = mal_paths + ben_paths
    for scan in TOOLS.values():  # warm-up: imports and caches are not timed
        run_tool(scan, paths[:1])
    verdicts: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    for name, scan in TOOLS.items():
        verdicts[name], seconds[name] = run_tool(scan, paths, args.repeat)
    print(f"| file | group | {' | '.join(TOOLS)} |")
    print("|---|---|" + "---|" * len(TOOLS))
    for i, case in enumerate(malicious + benign):
        kind = "malicious" if i < len(malicious) else "ordinary"
        print(f"| {case.name} | {kind}/{case.group} | " + " | ".join(verdicts[t][i] for t in TOOLS) + " |")
    n_mal = len(malicious)
    print("\n| tool | malicious flagged | malicious missed (clean) | errors on malicious | ordinary flagged "
          "(false alarms) | errors on ordinary | corpus wall time (s) | time / bastion |")
    print("|---|---|---|---|---|---|---|---|")
    for name in TOOLS:
        v = verdicts[name]
        mal, ben = v[:n_mal], v[n_mal:]
        print(f"| {name} | {mal.count('F')}/{n_mal} | {mal.count('.')} | {mal.count('E')} | "
              f"{ben.count('F')}/{len(ben)} | {ben.count('E')} | {seconds[name]:.3f} | "
              f"{seconds[name] / seconds['bastion']:.2f} |")
    print("\n| malicious group | files | " + " | ".join(TOOLS) + " |")
    print("|---|---|" + "---|" * len(TOOLS))
    for group in dict.fromkeys(c.group for c in malicious):
        index = [i for i, c in enumerate(malicious) if c.group == group]
        print(f"| {group} | {len(index)} | " + " | ".join(
            str(sum(verdicts[t][i] == "F" for i in index)) for t in TOOLS) + " |")
    (folder / "big").mkdir()
    big = big_files(folder / "big")
    print("\n| tool | " + " | ".join(p.name for p in big) + " | verdicts |")
    print("|---|" + "---|" * (len(big) + 1))
    for name, scan in {**TOOLS, "bastion without sha256": bastion_nohash_scan}.items():
        times, marks = [], []
        for path in big:
            (mark,), took = run_tool(scan, [path], args.repeat)
            times.append(took)
            marks.append(mark)
        print(f"| {name} | " + " | ".join(f"{t:.3f} s" for t in times) + f" | {''.join(marks)} |")


if __name__ == "__main__":
    main()
