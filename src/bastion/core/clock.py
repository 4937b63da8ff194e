"""Timestamps and run ids shared by the runner (which creates runs) and the run store (which records them)."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone


def now() -> str:
    """The current UTC time, to the second (ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """Sortable by time, unique by a random suffix: 20240501-120304-3fa9c1."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
