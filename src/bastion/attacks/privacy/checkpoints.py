"""Checkpoints of the reference-model attacks (LiRA, RMIA, shadow models), so that `--resume` continues them.

When a query budget or a deadline stops such an attack, its trained reference models (their in/out design and
their log-probabilities on every record the attack evaluates, which is all the attack ever asks of them) and the
target's answers so far are written to `$BASTION_CHECKPOINTS` (`bastion assess` sets it to the run's folder in the
run store) as one `.npz` of plain arrays, never a pickle. A later run of the same attack, with the same parameters,
seed, target and records (checked through a SHA-256 of all of them kept in the file), loads it instead of training
again, and queries the target only for the candidates it had not answered. A finished attack deletes its file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ENV = "BASTION_CHECKPOINTS"
UNUSED = {"n_jobs", "n_bootstrap"}  # parameters that change neither the reference models nor the target's answers


def folder() -> Path | None:
    """Where checkpoints are kept in this process, or None (not under `bastion assess` with a store)."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def job_digest(name: str, params: dict[str, Any], target_name: str, n_classes: int,
               arrays: list[np.ndarray | None]) -> str:
    """SHA-256 of what determines an attack's reference models and target answers."""
    kept = {k: (v if isinstance(v, str | int | float | bool | type(None)) else getattr(v, "__qualname__", repr(v)))
            for k, v in sorted(params.items()) if k not in UNUSED}
    h = hashlib.sha256(json.dumps([name, kept, target_name, int(n_classes)], sort_keys=True).encode())
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def path_for(name: str, digest: str) -> Path | None:
    base = folder()
    return None if base is None else base / f"{name}-{digest[:24]}.npz"


def save(name: str, digest: str, arrays: dict[str, np.ndarray]) -> Path | None:
    """Write the checkpoint (atomically); None when no checkpoint folder is set or it cannot be written."""
    path = path_for(name, digest)
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        with open(partial, "wb") as f:
            np.savez(f, digest=np.array(digest), **arrays)
        partial.replace(path)
    except OSError:
        return None
    return path


def load(name: str, digest: str) -> dict[str, np.ndarray] | None:
    """The arrays of a checkpoint whose digest matches, else None (none kept, another job's, or unreadable)."""
    path = path_for(name, digest)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:  # arrays only: nothing is unpickled
            if "digest" not in saved.files or str(saved["digest"]) != digest:
                return None
            return {k: saved[k] for k in saved.files if k != "digest"}
    except (OSError, ValueError, zipfile.BadZipFile):
        return None


def discard(name: str, digest: str) -> None:
    """Delete a finished attack's checkpoint."""
    path = path_for(name, digest)
    if path is not None:
        path.unlink(missing_ok=True)


NAME = re.compile(r"^[a-z0-9_]+-[0-9a-f]{24}\.npz$")


def into_sandbox(scratch: Path, env: dict[str, str]) -> tuple[Path, set[str]] | None:
    """Before a sandboxed worker starts: copy this process's checkpoints into its scratch folder (its only
    writable place) and point the worker's `env` there. Returns what `out_of_sandbox` needs, or None."""
    real = folder()
    if real is None:
        return None
    inside = scratch / "checkpoints"
    inside.mkdir(exist_ok=True)
    copied = set()
    for path in real.glob("*.npz") if real.is_dir() else ():
        if NAME.match(path.name) and path.is_file() and not path.is_symlink():
            shutil.copyfile(path, inside / path.name)
            copied.add(path.name)
    env[ENV] = str(inside)
    return real, copied


def out_of_sandbox(scratch: Path, carried: tuple[Path, set[str]] | None) -> None:
    """After a sandboxed worker stopped: its checkpoints replace those it was given (a finished job deleted its
    own). Only plain files with a checkpoint's name come out; they are read later with `allow_pickle=False`."""
    if carried is None:
        return
    real, copied = carried
    inside = scratch / "checkpoints"
    if not inside.is_dir():
        return
    for name in copied:
        if not (inside / name).exists():
            (real / name).unlink(missing_ok=True)
    for path in inside.iterdir():
        if NAME.match(path.name) and path.is_file() and not path.is_symlink():
            real.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), real / path.name)
