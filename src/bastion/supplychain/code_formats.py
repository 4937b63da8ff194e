"""Static checks of the archive formats that carry code: torch.export `.pt2` and TorchScript.

`.pt2` (torch.export.save): every member is read the way `torch.export.load` reads it. The payload configs
(`data/weights/*_weights_config.json`, `data/constants/*_constants_config.json`) decide how each payload is loaded:
raw tensor bytes, or `"use_pickle": true` (`torch.load(weights_only=False)`), `opaque_obj_*` (`pickle.loads`) and
`custom_obj_*` (TorchScript's unpickler), which are reported and judged by the pickle machine. `sample_inputs` and
legacy weight files go through `torch.load`, whose weights-only failure falls back to a full unpickle. The graph's
call targets (`models/*.json`) are judged by `torchscript_source.judge_target`; native libraries are flagged.

TorchScript (torch.jit.save): the `code/` sources are parsed (`torchscript_source.read_torchscript`); the pickles
(`data.pkl`, `constants.pkl`) are judged by the pickle machine in the scanner's member loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.core.errors import ModelLoadError
from bastion.supplychain.archives import ArchiveError, ZipDirectory, ZipMember, member_head, read_member
from bastion.supplychain.torchscript_source import Use, judge_target, read_torchscript
from bastion.supplychain.verdicts import RULES, Cursor

ScanBuffer = Callable[..., str]  # scanner.scan_buffer(data, cur, fmt=None)
ScanStreams = Callable[..., None]  # scanner.scan_streams(data, cur, start=0, *, mode, context)

RULES.update({
    "code-file-access": ("The model's code calls an operator that creates, maps, reads or writes a file it names "
                         "(e.g. aten::from_file with shared=True, aten::save).",
                         "Do not load or run this model outside a sandbox; obtain it from a trusted source."),
    "code-native-op": ("The model's code uses operators or classes that only a native (C++) library provides.",
                       "Load it only with operator libraries you built or trust, inside a sandbox."),
    "code-python-call": ("The exported graph calls a Python function instead of a registered tensor operator.",
                         "Treat the file as tampered with: torch.export graphs call operators, not Python code."),
    "code-obfuscation": ("The model's code hides which operators it calls (aliases of torch or ops), which "
                         "serialised TorchScript never does.", "Treat the file as tampered with."),
    "native-code": ("The archive carries a native library or executable that a loader can map into the process.",
                    "Do not load it: native code runs with your privileges. Re-export the model without it."),
    "pickled-payload": ("The archive stores a payload as a pickle, which its loader unpickles with full code "
                        "execution (not weights-only).", "Load only with --trust, inside the sandbox, from a "
                        "source you trust; re-export it with plain tensors."),
})

_NATIVE_SUFFIXES = (".so", ".dll", ".dylib", ".pyd", ".exe", ".bin.so", ".cubin", ".fatbin")
_NATIVE_MAGIC = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe")  # ELF, Mach-O


def check_code_archive(fmt: str, data: Any, directory: ZipDirectory, cur: Cursor, scan_buffer: ScanBuffer,
                       scan_streams: ScanStreams) -> set[str]:
    """Run the checks of `fmt` ("torch-export" or "torchscript"); return the members read here, which the
    scanner's generic member loop then skips."""
    if fmt not in ("torch-export", "torchscript"):
        return set()
    read = _check_torchscript(data, directory, cur)  # a .pt2 may carry code/ too, for a loader that reads it
    if fmt == "torch-export":
        read |= _Pt2(data, directory, cur, scan_buffer, scan_streams, skip=read).check()
    return read


def _relative(name: str) -> str:
    """The record name inside the archive's top folder, lower-cased (PyTorch's reader ignores case)."""
    return (name.split("/", 1)[1] if "/" in name else name).lower()


def _report_use(cur: Cursor, use: Use) -> None:
    cur.report(use.rule, use.severity, f"{use.why}, in {use.where}", subject=f"{use.op}@{use.where}",
               op=use.op, function=use.where)


def _native(m: ZipMember, head: bytes, cur: Cursor) -> bool:
    if m.name.lower().endswith(_NATIVE_SUFFIXES) or head.startswith(_NATIVE_MAGIC):
        cur.enter(m.name).report("native-code", "high", f"member {m.name!r} is a native library or executable",
                                 subject=f"native:{m.name}")
        return True
    return False


# ---- TorchScript -------------------------------------------------------------------------------------------------

def _check_torchscript(data: Any, directory: ZipDirectory, cur: Cursor) -> set[str]:
    """Parse every `.py` member (the `code/` sources the importer compiles); flag native members."""
    read: set[str] = set()
    for m in directory.members:
        if m.data < 0 or m.name.endswith("/"):
            continue
        if _native(m, member_head(data, m, cur), cur):
            read.add(m.name)
        elif m.name.lower().endswith(".py"):
            read.add(m.name)
            _check_source(data, m, cur.enter(m.name))
    return read


def _check_source(data: Any, m: ZipMember, cur: Cursor) -> None:
    try:
        source = read_member(data, m, cur).decode("utf-8")
        uses = read_torchscript(source)
    except ArchiveError as exc:
        cur.report("malformed", "high", f"TorchScript code member cannot be read: {exc}")
        return
    except (UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        cur.report("malformed", "high", f"TorchScript code cannot be parsed, so what it calls is unknown: "
                   f"{type(exc).__name__}")
        return
    for use in uses:
        _report_use(cur, use)


# ---- torch.export .pt2 -----------------------------------------------------------------------------------------

class _Pt2:
    """One .pt2 archive: payload configs first, then every member by the role its loader gives it."""

    def __init__(self, data: Any, directory: ZipDirectory, cur: Cursor, scan_buffer: ScanBuffer,
                 scan_streams: ScanStreams, skip: set[str]):
        self.data, self.directory, self.cur, self.skip = data, directory, cur, skip
        self.scan_buffer, self.scan_streams = scan_buffer, scan_streams
        self.pickled: dict[str, str] = {}  # relative member name -> why its loader unpickles it
        self.raw: set[str] = set()  # relative member names read as raw tensor bytes

    def check(self) -> set[str]:
        members = [m for m in self.directory.members
                   if m.data >= 0 and not m.name.endswith("/") and m.name not in self.skip]
        for m in members:
            rel = _relative(m.name)
            if rel.endswith(("_weights_config.json", "_constants_config.json")):
                self._config(m, rel.rsplit("/", 1)[0])
        for m in members:
            self._member(m, _relative(m.name))
        return {m.name for m in members}

    def _json(self, m: ZipMember, cur: Cursor) -> Any:
        try:
            return json.loads(read_member(self.data, m, cur, limit=cur.limits.max_header_bytes))
        except ArchiveError as exc:
            cur.report("malformed", "high", f"member cannot be read: {exc}")
        except (ValueError, RecursionError):
            cur.report("malformed", "high", "JSON member cannot be parsed, so how its loader reads the archive "
                       "is unknown")
        return None

    def _config(self, m: ZipMember, folder: str) -> None:
        cur = self.cur.enter(m.name)
        config = self._json(m, cur)
        if config is None:
            return
        entries = config.get("config") if isinstance(config, dict) else None
        if not isinstance(entries, dict):
            cur.report("malformed", "high", "payload config has no 'config' mapping")
            return
        for fqn, entry in entries.items():
            path = entry.get("path_name") if isinstance(entry, dict) else None
            if not isinstance(path, str) or not path or "/" in path or "\\" in path or path in (".", ".."):
                cur.report("malformed", "high", f"payload config entry {fqn!r} has no plain path_name, so which "
                           "member its loader reads is unknown")
                continue
            rel = f"{folder}/{path}".lower()
            base = path.lower()
            if base.startswith("opaque_obj_"):
                self.pickled[rel] = f"constant {fqn!r} is an opaque object, read with pickle.loads"
            elif base.startswith("custom_obj_"):
                self.pickled[rel] = f"constant {fqn!r} is a custom object, read with TorchScript's unpickler"
            elif entry.get("use_pickle") is not False:
                self.pickled[rel] = (f"{fqn!r} is marked use_pickle, so torch.export.load reads it with "
                                     "torch.load(weights_only=False)")
            else:
                self.raw.add(rel)

    def _member(self, m: ZipMember, rel: str) -> None:
        cur = self.cur.enter(m.name)
        if self.cur.sink.out_of_time():
            cur.report("limit", "high", "scan time limit reached before every member was checked")
            return
        if rel in self.raw and rel not in self.pickled or rel.endswith(("_weights_config.json",
                                                                          "_constants_config.json")):
            return  # raw tensor bytes (never unpickled), or a config read above
        if _native(m, member_head(self.data, m, cur), self.cur):
            return
        try:
            if rel in self.pickled:
                cur.report("pickled-payload", "high", self.pickled[rel], subject=f"pickled:{rel}")
                self._pickle(m, cur, rel.rsplit("/", 1)[-1].startswith("custom_obj_"))
            elif rel.startswith("models/") and rel.endswith(".json"):
                self._graph(m, cur)
            elif rel.startswith(("data/sample_inputs/", "data/weights/", "data/constants/")):
                # torch.load(weights_only=True) with a fallback to weights_only=False (sample inputs, legacy
                # weight and constant files); members no config names are read the same way, to be safe
                self._pickle(m, cur, False)
            else:
                self.scan_buffer(read_member(self.data, m, cur), cur)
        except ArchiveError as exc:
            cur.report("malformed", "high", f"archive member cannot be read: {exc}")

    def _pickle(self, m: ZipMember, cur: Cursor, torchscript: bool) -> None:
        """Judge a payload as its loader reads it: torch.load takes ZIP archives and legacy pickle streams."""
        body = read_member(self.data, m, cur)
        if not body:
            return
        if body.startswith(b"PK\x03\x04"):
            self.scan_buffer(body, cur)
        else:
            self.scan_streams(body, cur, context="torchscript" if torchscript else "pickle")

    def _graph(self, m: ZipMember, cur: Cursor) -> None:
        graph = self._json(m, cur)
        stack = [graph]
        while stack:
            node = stack.pop()
            if isinstance(node, list):
                stack.extend(node)
            elif isinstance(node, dict):
                target = node.get("target")
                if isinstance(target, str) and "inputs" in node:
                    use = judge_target(target)
                    if use is not None:
                        _report_use(cur, use)
                stack.extend(v for v in node.values() if isinstance(v, (dict, list)))


# ---- the loaders' gate -------------------------------------------------------------------------------------------

def refuse_unless_trusted(path: Path, expected: str, trust: bool, min_severity: str = "high") -> None:
    """Scan a model file before its loader runs. Without `trust`, refuse (one line) when the scanner reads the
    bytes as another format than the loader will, or when a finding reaches `min_severity`."""
    from bastion.supplychain.file_scan import scan_path

    if trust:
        return
    report = scan_path(path, digest=False)
    if report.errors:
        raise ModelLoadError(f"cannot scan {path.name} before loading it: {report.errors[0]}")
    fmt = report.files[0].format if report.files else "unknown"
    if fmt != expected:
        raise ModelLoadError(f"refusing to load {path.name}: its loader reads it as {expected}, but its bytes scan "
                             f"as {fmt}; pass --trust to load it anyway")
    blocking = report.at_or_above(min_severity)
    if blocking:
        worst = blocking[0]
        where, title = worst.evidence.get("member") or path.name, worst.title.rsplit(" (", 1)[0]
        raise ModelLoadError(f"refusing to load {path.name}: {worst.severity} finding '{title}' in {where}"
                             f" ({len(blocking)} at {min_severity} or above, see `bastion scan`); "
                             "pass --trust to load it anyway")
