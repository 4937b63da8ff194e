"""Hostile model files for the tests, each with a benign twin of the same format that only computes.

Every builder writes into a folder the test owns and returns the path. A hostile file's payload writes a `canary`
path and/or connects to a loopback `address` (host, port), so a test can check that it was contained; `harms`
proves, in a throwaway subprocess, that a file really does its harm when it is loaded the naive way.
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bastion.models.metadata import METADATA_KEY, ModelMetadata

META = ModelMetadata(n_classes=3, input_shape=[4], bounds=[0.0, 1.0])
Address = tuple[str, int]


# ---- the payload: what every hostile pickle and factory tries -------------------------------------------------

def payload_source(canary: Path | None = None, address: Address | None = None) -> str:
    """Python statements that write `canary` and connect to `address`, each attempt guarded so all are made."""
    lines = []
    if canary is not None:
        lines.append(f"try:\n    open({str(canary)!r}, 'w').write('pwned')\nexcept OSError:\n    pass")
    if address is not None:
        lines.append("import socket\ntry:\n    socket.create_connection("
                     f"({address[0]!r}, {address[1]}), timeout=2).close()\nexcept OSError:\n    pass")
    return "\n".join(lines) or "pass"


class _Exec:
    """Pickles as a call of `eval`: unpickling runs the source, then returns `value` (an expression), so that the
    model still loads and answers."""

    def __init__(self, source: str, value: str = "None"):
        self.source, self.value = source, value

    def __reduce__(self) -> tuple:
        return (eval, (f"exec({self.source!r}) or ({self.value})",))


TENSOR = "__import__('torch').zeros({shape})"
PARAMETER = "__import__('torch').nn.Parameter(__import__('torch').zeros({shape}))"


def attacker_pickle(canary: Path | None = None, address: Address | None = None, value: str = "None") -> bytes:
    """A torch.save archive whose data.pkl runs the payload (what `torch.load(weights_only=False)` reads) and
    returns `value`."""
    buffer = io.BytesIO()
    torch.save(_Exec(payload_source(canary, address), value), buffer)
    return buffer.getvalue()


# ---- torch.export .pt2 ----------------------------------------------------------------------------------------

class Plain(nn.Module):
    """A linear layer, a buffer and a tensor constant: a .pt2 with weights, buffers and constants."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("scale", torch.ones(3))
        self.offset = torch.tensor([0.0, 0.5, 1.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale + self.offset


class Bare(nn.Module):
    """No buffer and no constant: a .pt2 with weights only."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def export_pt2(path: Path, module: nn.Module | None = None) -> Path:
    """A .pt2 written by torch.export.save (dynamic batch), with Bastion's metadata."""
    torch.manual_seed(0)
    module = (module or Plain()).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, (torch.rand(2, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path), extra_files={METADATA_KEY: META.to_json()})
    return path


def _rewrite(path: Path, edit: dict[str, bytes | None]) -> None:
    """Replace (bytes), drop (None) or add members, matched by the name after the archive folder."""
    with zipfile.ZipFile(path) as z:
        members = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    root = members[0][0].split("/", 1)[0]
    done, out = set(), []
    for name, body in members:
        rel = name.split("/", 1)[1]
        if rel in edit:
            done.add(rel)
            if edit[rel] is None:
                continue
            body = edit[rel]  # type: ignore[assignment]
        out.append((name, body))
    out += [(f"{root}/{rel}", body) for rel, body in edit.items() if rel not in done and body is not None]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, body in out:
            z.writestr(name, body)


def _config(path: Path, rel: str) -> dict:
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.split("/", 1)[1] == rel)
        return json.loads(z.read(name))


def pt2_use_pickle(folder: Path, canary: Path | None = None, address: Address | None = None) -> Path:
    """A .pt2 whose `model_weights_config.json` marks `lin.weight` `"use_pickle": true`; its member holds attacker
    pickle bytes, which `torch.export.load` reads with `torch.load(weights_only=False)` (the model then loads)."""
    path = export_pt2(folder / "use_pickle.pt2")
    rel = "data/weights/model_weights_config.json"
    config = _config(path, rel)
    entry = config["config"]["lin.weight"]
    entry["use_pickle"] = True
    _rewrite(path, {rel: json.dumps(config).encode(),
                    f"data/weights/{entry['path_name']}": attacker_pickle(canary, address,
                                                                         PARAMETER.format(shape="3, 4"))})
    return path


def pt2_opaque_constant(folder: Path, canary: Path | None = None, address: Address | None = None) -> Path:
    """A .pt2 whose constant is an opaque object (`opaque_obj_*`), which `torch.export.load` reads with
    `pickle.loads`: here attacker bytes."""
    path = export_pt2(folder / "opaque.pt2")
    rel = "data/constants/model_constants_config.json"
    config = _config(path, rel)
    entry = config["config"]["offset"]
    old = entry["path_name"]
    entry.update(path_name="opaque_obj_0", tensor_meta=None, use_pickle=True)
    payload = pickle.dumps(_Exec(payload_source(canary, address), TENSOR.format(shape="3")), protocol=2)
    _rewrite(path, {rel: json.dumps(config).encode(), f"data/constants/{old}": None,
                    "data/constants/opaque_obj_0": payload})
    return path


def pt2_pickled_constant(folder: Path, canary: Path | None = None, address: Address | None = None) -> Path:
    """A .pt2 whose tensor constant is marked `"use_pickle": true` with attacker bytes (`torch.load`)."""
    path = export_pt2(folder / "pickled_constant.pt2")
    rel = "data/constants/model_constants_config.json"
    config = _config(path, rel)
    entry = config["config"]["offset"]
    entry["use_pickle"] = True
    _rewrite(path, {rel: json.dumps(config).encode(),
                    f"data/constants/{entry['path_name']}": attacker_pickle(canary, address,
                                                                           TENSOR.format(shape="3"))})
    return path


def pt2_native_member(folder: Path) -> Path:
    """A .pt2 that carries a shared library (an AOTInductor-style member)."""
    path = export_pt2(folder / "native.pt2")
    _rewrite(path, {"data/aotinductor/model/model.so": b"\x7fELF\x02\x01\x01" + bytes(57)})
    return path


# ---- TorchScript ------------------------------------------------------------------------------------------------

class FromFileInForward(nn.Module):
    """`torch.from_file(path, shared=True, size=...)` (aten::from_file) creates and maps any file, in forward."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        touched = torch.from_file(self.path, shared=True, size=16, dtype=torch.uint8)
        return self.lin(x) + touched.sum() * 0


class FromFileInSetstate(nn.Module):
    """A scripted `__setstate__` runs when the file is loaded; here it maps (creates) a file. (It must set every
    field, so the module keeps none but its path.)"""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        mapped = torch.from_file(self.path, shared=True, size=16, dtype=torch.uint8)
        self.training = state[1] or bool(mapped.sum() < 0)  # used, so that it is not optimised away

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3] * 2.0


class ComputeInSetstate(nn.Module):
    """Benign twin of FromFileInSetstate: its `__setstate__` only computes."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1] or bool(torch.ones(2).sum() < 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3] * 2.0


class EndlessLoop(nn.Module):
    """TorchScript whose forward never returns (static reading cannot see it: the sandbox's deadline does)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = 0
        while steps >= 0:
            steps = steps + 1
        return self.lin(x)


class BoundedLoop(nn.Module):
    """Benign twin of EndlessLoop: a loop that ends."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        for _ in range(3):
            y = y * 1.0
        return y


def scripted(module: nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path), _extra_files={METADATA_KEY: META.to_json()})
    return path


def torchscript_from_file(folder: Path, canary: Path, where: str = "forward") -> Path:
    """TorchScript that creates/maps `canary` with aten::from_file in `forward` or in `__setstate__` (load time)."""
    cls = FromFileInForward if where == "forward" else FromFileInSetstate
    return scripted(cls(str(canary)), folder / f"from_file_{where}.pt")


def torchscript_plain(folder: Path, where: str = "forward") -> Path:
    """Benign twin: the same shapes, only computing (a linear layer, or a `__setstate__` that computes)."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 3)) if where == "forward" else ComputeInSetstate("unused")
    return scripted(module, folder / f"plain_{where}.pt")


def patch_torchscript_code(path: Path, old: str, new: str) -> Path:
    """Rewrite text in the archive's code/ members (what an attacker edits by hand: spelling tricks)."""
    with zipfile.ZipFile(path) as z:
        members = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, body in members:
            if "/code/" in name and name.endswith(".py"):
                body = body.decode().replace(old, new).encode()
            z.writestr(name, body)
    return path


def torchscript_endless(folder: Path) -> Path:
    return scripted(EndlessLoop(), folder / "endless.pt")


def torchscript_bounded(folder: Path) -> Path:
    torch.manual_seed(0)
    return scripted(BoundedLoop(), folder / "bounded.pt")


# ---- skops ------------------------------------------------------------------------------------------------------

def _skops_classifier() -> object:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.random((30, 4))
    return LogisticRegression(max_iter=200).fit(x, np.arange(30) % 3)


def skops_plain(folder: Path, name: str = "plain.skops") -> Path:
    """Benign twin: a fitted LogisticRegression saved by skops."""
    import skops.io as sio

    path = folder / name
    sio.dump(_skops_classifier(), str(path))
    return path


def _call_node(module: str, name: str, args: list) -> dict:
    """A skops node that calls `module.name(*args)` while loading (ConstructorFromReduceNode)."""
    items = [{"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": json.dumps(a),
              "is_json": True} for a in args]
    return {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode",
                        "content": items}}


def _skops_with_call(path: Path, module: str, name: str, args: list) -> Path:
    """Save the classifier, then graft a call node in place of one of its attributes (`verbose`)."""
    plain = skops_plain(path.parent, path.stem + "-base.skops")
    with zipfile.ZipFile(plain) as z:
        members = {n: z.read(n) for n in z.namelist()}
    plain.unlink()
    schema = json.loads(members["schema.json"])
    schema["content"]["content"]["verbose"] = _call_node(module, name, args)
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, body in members.items():
            z.writestr(n, body)
    return path


def skops_numpy_load(folder: Path, read: Path) -> Path:
    """A skops file whose tree calls `numpy.load(read)` while loading (reads any file the user can read)."""
    return _skops_with_call(folder / "numpy_load.skops", "numpy", "load", [str(read)])


def skops_numpy_savetxt(folder: Path, canary: Path) -> Path:
    """A skops file whose tree calls `numpy.savetxt(canary, ...)` while loading: writes any file."""
    return _skops_with_call(folder / "numpy_savetxt.skops", "numpy", "savetxt", [str(canary), "pwned"])


# ---- ONNX -------------------------------------------------------------------------------------------------------

def _onnx_model(nodes: list, path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "model", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.1] * 12)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: META.to_json()})
    onnx.save(model, str(path))
    return path


def onnx_loop(folder: Path, trips: int = 2**62) -> Path:
    """An ONNX graph whose `Loop` runs `trips` iterations (2^62: forever) before its MatMul answers."""
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("t", TensorProto.INT64, [], [trips])),
             helper.make_node("Constant", [], ["go"], value=helper.make_tensor("g", TensorProto.BOOL, [], [True])),
             helper.make_node("Loop", ["trips", "go", "x"], ["v"], body=body),
             helper.make_node("MatMul", ["v", "w"], ["y"])]
    return _onnx_model(nodes, folder / ("endless.onnx" if trips >= 2**32 else "loop.onnx"))


# ---- --arch factories -------------------------------------------------------------------------------------------

def arch_factory(folder: Path, canary: Path | None = None, address: Address | None = None,
                 spawn: bool = True) -> str:
    """An `--arch` factory file whose factory writes `canary`, connects to `address` and spawns a process."""
    body = payload_source(canary, address)
    if spawn:
        body += "\nimport subprocess\ntry:\n    subprocess.run(['true'])\nexcept OSError:\n    pass"
    source = folder / "evil_arch.py"
    source.write_text("import torch\n\n\ndef factory():\n" + textwrap.indent(body, "    ")
                      + "\n    return torch.nn.Linear(4, 3)\n")
    return f"{source}:factory"


def arch_plain(folder: Path) -> str:
    """Benign twin: a factory that only builds the layer."""
    source = folder / "plain_arch.py"
    source.write_text("import torch\n\n\ndef factory():\n    return torch.nn.Linear(4, 3)\n")
    return f"{source}:factory"


# ---- proof that a hostile file does its harm ---------------------------------------------------------------------

NAIVE_LOADS = {
    "pt2": "import torch; torch.export.load({path!r})",
    "torchscript": "import torch; torch.jit.load({path!r})",
    "torchscript-forward": "import torch; torch.jit.load({path!r})(torch.zeros(1, 4))",
    "skops": "import skops.io as s; s.load({path!r}, trusted=s.get_untrusted_types(file={path!r}))",
    "arch": "import importlib.util as u; p, _, f = {path!r}.rpartition(':'); s = u.spec_from_file_location('m', p);"
            " m = u.module_from_spec(s); s.loader.exec_module(m); getattr(m, f)()",
}


def harms(kind: str, path: Path | str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Load `path` the naive way (no Bastion) in a throwaway subprocess; the caller checks the canary."""
    code = NAIVE_LOADS[kind].format(path=str(path))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
