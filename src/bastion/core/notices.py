"""One notice line on stderr, once per process (a warning the user should see but that stops nothing)."""

from __future__ import annotations

import sys

_SAID: set[str] = set()


def say_once(line: str) -> None:
    """`bastion: <line>` on stderr, the first time this process says it."""
    if line not in _SAID:
        _SAID.add(line)
        print(f"bastion: {line}", file=sys.stderr, flush=True)
