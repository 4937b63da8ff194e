"""Checks on output paths, made before any work starts: an output never overwrites an input, never lands inside an
input folder, and is writable (a folder that can be created, a file whose folder exists)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from bastion.core.errors import ParameterError

PathLike = str | Path


def _resolved(path: PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when `a` and `b` name the same file or folder (symbolic and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return _resolved(a) == _resolved(b)


def _inside(path: PathLike, folder: PathLike) -> bool:
    child, parent = _resolved(path), _resolved(folder)
    return child != parent and parent in child.parents


def _local_inputs(inputs: Iterable[PathLike | None]) -> list[Path]:
    return [Path(str(p)) for p in inputs if p is not None and not str(p).startswith(("http://", "https://"))]


def check_output_file(out: PathLike, inputs: Iterable[PathLike | None], option: str) -> Path:
    """`out` is a file Bastion will write: refuse it when it is one of `inputs` (or a folder), or cannot be written."""
    out = Path(out)
    for source in _local_inputs(inputs):
        if source.exists() and same_file(out, source):
            raise ParameterError(f"{option} {out} is an input of this command; writing it would destroy the input")
    if out.is_dir():
        raise ParameterError(f"{option} {out} is a folder; give a file name")
    folder = _resolved(out).parent
    while not folder.exists():  # the nearest existing folder must let the missing ones be created
        folder = folder.parent
    if not folder.is_dir():
        raise ParameterError(f"{option} {out}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ParameterError(f"{option} {out} is not writable")
    return out


def prepare_output_dir(out: PathLike, inputs: Iterable[PathLike | None], option: str = "--out") -> Path:
    """Create report folder `out` now (not after the run), after checking that it is neither an input nor inside an
    input folder, and that a file can be written there."""
    out = Path(out)
    for source in _local_inputs(inputs):
        if not source.exists():
            continue
        if same_file(out, source):
            raise ParameterError(f"{option} {out} is an input of this command; choose another folder")
        if source.is_dir() and _inside(out, source):
            raise ParameterError(f"{option} {out} lies inside the input folder {source}; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{option} {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ParameterError(f"{option} {out} cannot be written: {exc.strerror or exc}") from None
    return out


def check_report_files(folder: Path, names: Iterable[str], inputs: Iterable[PathLike | None],
                       option: str = "--out") -> None:
    """None of the files a report writes into `folder` may be an input (e.g. a model called report.json)."""
    sources = [s for s in _local_inputs(inputs) if s.exists()]
    for name in names:
        for source in sources:
            if same_file(folder / name, source):
                raise ParameterError(f"{option} {folder}: writing {name} would overwrite the input {source}")
