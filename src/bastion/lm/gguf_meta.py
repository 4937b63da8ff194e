"""Read string metadata (the chat template) from a GGUF file's header without loading its tensors.

Layout per the ggml GGUF specification (v2/v3): magic `GGUF`, u32 version, u64 tensor count, u64 key/value count,
then key/value pairs: a string key (u64 length + UTF-8 bytes), a u32 value type and the value (fixed-size scalars,
strings, or arrays as element type + u64 count + elements). Every length is bounded by the file size.
"""

from __future__ import annotations

import struct
from pathlib import Path

from bastion.core.errors import ModelLoadError

_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # uint8 ... float64 (type ids)
_STRING, _ARRAY = 8, 9
_MAX_ENTRIES = 1 << 20


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelLoadError("GGUF metadata runs past the end of the file")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> str:
        return self.take(self.u64()).decode("utf-8", "replace")

    def skip(self, vtype: int, depth: int = 0) -> None:
        if vtype in _FIXED:
            self.take(_FIXED[vtype])
        elif vtype == _STRING:
            self.take(self.u64())
        elif vtype == _ARRAY and depth < 2:
            etype, count = self.u32(), self.u64()
            if etype in _FIXED:
                self.take(_FIXED[etype] * count)
            else:
                if count > len(self.data):
                    raise ModelLoadError("GGUF array longer than the file")
                for _ in range(count):
                    self.skip(etype, depth + 1)
        else:
            raise ModelLoadError(f"GGUF metadata has an unknown value type {vtype}")


def gguf_strings(path: str | Path, keys: set[str]) -> dict[str, str]:
    """The string values of `keys` found in the GGUF header (missing keys are left out)."""
    data = Path(path).read_bytes() if Path(path).stat().st_size < 1 << 24 else _head(Path(path))
    r = _Reader(data)
    if r.take(4) != b"GGUF":
        raise ModelLoadError(f"{Path(path).name}: not a GGUF file (bad magic)")
    version, _, count = r.u32(), r.u64(), r.u64()
    if version not in (2, 3) or count > _MAX_ENTRIES:
        raise ModelLoadError(f"{Path(path).name}: unsupported GGUF version {version} or {count} metadata entries")
    found: dict[str, str] = {}
    for _ in range(count):
        key, vtype = r.string(), r.u32()
        if key in keys and vtype == _STRING:
            found[key] = r.string()
        else:
            r.skip(vtype)
    return found


def _head(path: Path, limit: int = 64 << 20) -> bytes:
    """The first 64 MiB (metadata of real models, vocabularies included, fits well within it)."""
    with path.open("rb") as f:
        return f.read(limit)


def gguf_chat_template(path: str | Path) -> str | None:
    """`tokenizer.chat_template` of a GGUF file, or None when it has none."""
    return gguf_strings(path, {"tokenizer.chat_template"}).get("tokenizer.chat_template")
