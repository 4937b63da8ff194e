"""One vocabulary: no two modules of src/bastion share a file name (issue 15), so a name says which module."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bastion"

# `__init__.py` is a package, not a module name; `base.py` is each package's contract (one per package, imported
# as `<package>.base`), a convention kept on purpose.
CONVENTIONAL = {"__init__.py", "base.py"}
# Known duplicates: none left (the sandbox modules were renamed: assess_backend, sandboxed_run, cli_jobs).
KNOWN: dict[str, str] = {}


def duplicates() -> dict[str, list[str]]:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        seen[path.name].append(path.relative_to(PACKAGE).as_posix())
    return {name: paths for name, paths in seen.items() if len(paths) > 1 and name not in CONVENTIONAL}


def test_no_two_modules_share_a_name():
    unexpected = {name: paths for name, paths in duplicates().items() if name not in KNOWN}
    assert not unexpected, f"rename one of each (a name should say which module it is): {unexpected}"


def test_known_duplicates_still_exist():
    stale = sorted(set(KNOWN) - set(duplicates()))
    assert not stale, f"remove from KNOWN, the duplicate is gone: {stale}"
