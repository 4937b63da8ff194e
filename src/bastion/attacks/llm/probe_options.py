"""Options of `bastion attack llm ...` probes (dispatched by bastion.cli.llm): `--key value` pairs, integers and
behaviour files, each bad value one clear `ParameterError`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bastion.core.errors import ParameterError

from .jailbreak_prompts import affirmative_target, behaviours, categorise


def parse_args(name: str, args: list[str], allowed: set[str]) -> dict[str, str]:
    """`--key value` pairs, each key one of `allowed` (one clear error otherwise)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        key = args[i][2:] if args[i].startswith("--") else ""
        if key not in allowed:
            raise ParameterError(f"llm {name}: unknown option {args[i]!r} (options: "
                                 f"{', '.join('--' + o for o in sorted(allowed))})")
        if i + 1 >= len(args):
            raise ParameterError(f"llm {name}: --{key} needs a value")
        out[key], i = args[i + 1], i + 2
    return out


def integer(opts: dict[str, str], key: str, default: int) -> int:
    try:
        return int(opts[key]) if key in opts else default
    except ValueError:
        raise ParameterError(f"--{key} must be an integer, got {opts[key]!r}") from None


def read_prompt_rows(path: str | Path, what: str) -> list[dict[str, Any]]:
    """The rows of a prompt file: one prompt per line, or `.jsonl` objects each with a non-empty string
    `prompt`; an unreadable file or a bad line is one `ParameterError`."""
    file = Path(path)
    try:
        lines = [ln for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ParameterError(f"{what} {file}: cannot read it as UTF-8 text "
                             f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if file.suffix != ".jsonl":
            rows.append({"prompt": line.strip()})
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ParameterError(f"{what} {file}: line {n} is not JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ParameterError(f"{what} {file}: line {n} needs a non-empty string 'prompt'")
        rows.append(row)
    return rows


def read_behaviours(opts: dict[str, str]) -> list[dict[str, str]]:
    """`--behaviours FILE` (.jsonl of {prompt, category?, target?}, or one prompt per line) or `--set NAME`."""
    if "behaviours" not in opts:
        rows = behaviours(opts.get("set", "bastion"))
    else:
        rows = [{"prompt": row["prompt"], "category": str(row.get("category") or categorise(row["prompt"])),
                 "target": str(row.get("target") or affirmative_target(row["prompt"]))}
                for row in read_prompt_rows(opts["behaviours"], "--behaviours")]
    limit = integer(opts, "limit", 0)
    return rows[:limit] if limit > 0 else rows
