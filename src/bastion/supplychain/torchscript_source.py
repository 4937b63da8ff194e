"""What the operators named in serialised model code can do: TorchScript's `code/` sources and the call targets
of a torch.export graph.

TorchScript code is Python syntax that the TorchScript importer compiles, with `torch` bound to the `aten`
operators and `ops` to every registered operator namespace. It is read here with Python's own parser, so spacing,
line continuations and comments cannot hide a name, and aliases of `torch` or `ops` (which serialised code never
writes) are reported. Code the parser cannot read is reported too (fail closed).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

# aten / debugprims operators that create, map, read or write files named by the model
FILE_OPS = frozenset({"from_file", "save", "load_tensor"})
# operator namespaces that ship with PyTorch (and torchvision) and only compute
SAFE_NAMESPACES = frozenset({
    "aten", "prim", "prims", "quantized", "_quantized", "quantized_decomposed", "quantization", "prepacked",
    "mkldnn", "mkldnn_prepacked", "onednn", "mkl", "sparse", "rngprims", "higher_order", "profiler", "torchvision",
    "_native",
})
# Python names that give a torch.export graph target a way out of tensor computation
_ESCAPES = frozenset({
    "os", "sys", "subprocess", "system", "popen", "exec", "eval", "compile", "open", "builtins", "importlib",
    "__import__", "socket", "shutil", "pickle", "hub", "serialization", "load", "save", "from_file", "getattr",
    "setattr", "delattr", "globals", "locals", "ctypes", "utils", "library", "load_library", "_C",
})
# `_operator` functions that only compute on their arguments
_PURE_OPERATORS = frozenset({
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "invert", "and_",
    "or_", "xor", "not_", "lshift", "rshift", "matmul", "eq", "ne", "lt", "le", "gt", "ge", "truth",
})


@dataclass(frozen=True)
class Use:
    """One dangerous use of a name: the rule and severity to report, the operator, and where it is."""

    rule: str
    severity: str
    op: str
    where: str
    why: str


def _chain(node: ast.AST) -> list[str] | None:
    """`torch.ops.aten.from_file` -> ['torch', 'ops', 'aten', 'from_file']; None for anything but names."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _namespace(parts: list[str]) -> str | None:
    """The operator (or custom class) namespace a TorchScript name resolves into, if any."""
    if parts[0] == "ops" and len(parts) > 2:
        return parts[1]
    if parts[:2] == ["torch", "ops"] and len(parts) > 3:
        return parts[2]
    if "classes" in parts[:-1]:  # torch.classes.NS.Class, __torch__.torch.classes.NS.Class
        at = parts.index("classes")
        if at > 0 and parts[at - 1] == "torch" and at + 1 < len(parts):
            return parts[at + 1]
    return None


def _judge_chain(parts: list[str], where: str) -> Iterator[Use]:
    name = ".".join(parts)
    if parts[0] in ("torch", "ops", "__torch__"):
        touched = FILE_OPS.intersection(parts[1:])
        if touched:
            op = sorted(touched)[0]
            yield Use("code-file-access", "critical", name, where,
                      f"calls {name}, the operator aten::{op}, which creates, reads or writes a file the model names")
    ns = _namespace(parts)
    if ns is not None and ns not in SAFE_NAMESPACES:
        yield Use("code-native-op", "high", name, where,
                  f"uses {name} from the operator namespace '{ns}', which only a native library can provide")


class _Reader(ast.NodeVisitor):
    def __init__(self) -> None:
        self.uses: list[Use] = []
        self.function = "<module>"
        self.aliases: dict[str, list[str]] = {}  # `t = torch` -> {"t": ["torch"]}, so `t.from_file` is judged

    def resolve(self, parts: list[str]) -> list[str]:
        alias = self.aliases.get(parts[0])
        return [*alias, *parts[1:]] if alias else parts

    def where(self) -> str:
        if self.function == "__setstate__":
            return "__setstate__, which runs when the file is loaded"
        return self.function

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    def visit_Attribute(self, node: ast.Attribute) -> None:
        parts = _chain(node)
        if parts is None:
            self.generic_visit(node)  # e.g. torch.from_file(...).sum: the inner chain is judged on its own
            return
        self.uses.extend(_judge_chain(self.resolve(parts), self.where()))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) >= 2:
            name = node.args[1]
            base = _chain(node.args[0])
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and base is not None:
                self.uses.extend(_judge_chain(self.resolve([*base, name.value]), self.where()))
        self.generic_visit(node)

    def _alias(self, targets: list[ast.AST], value: ast.AST | None) -> None:
        """Report (and remember) a name bound to `torch`, `ops` or an operator namespace."""
        values = value.elts if isinstance(value, (ast.Tuple, ast.List)) else [value]
        for item in values:
            parts = _chain(item) if item is not None else None
            if parts is None:
                continue
            parts = self.resolve(parts)
            if parts[0] in ("torch", "ops") and (len(parts) == 1 or "ops" in parts):
                self.uses.append(Use("code-obfuscation", "high", ".".join(parts), self.where(),
                                     f"binds {'.'.join(parts)} to a name, hiding which operators it calls"))
                if len(targets) == 1 and isinstance(targets[0], ast.Name) and len(values) == 1:
                    self.aliases[targets[0].id] = parts

    def visit_Assign(self, node: ast.Assign) -> None:
        self._alias(node.targets, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._alias([node.target], node.value)
        self.generic_visit(node)


def read_torchscript(source: str) -> list[Use]:
    """Dangerous uses in one TorchScript source file; raises SyntaxError or ValueError when it cannot be parsed."""
    tree = ast.parse(source)
    reader = _Reader()
    reader.visit(tree)
    return reader.uses


def judge_target(target: str) -> Use | None:
    """A torch.export graph node's call target, as `torch.export.load` resolves it (None when it only computes).

    `torch.*` targets are looked up attribute by attribute from the torch module, `_operator.*` in `operator`,
    `math.*` in `math`; `#...` names an extension operator."""
    parts = target.split(".")
    if target.startswith("#"):
        return Use("code-native-op", "high", target, "graph", f"calls the extension operator {target}")
    if parts[0] == "math" and len(parts) == 2:
        return None
    if parts[0] == "_operator" and len(parts) == 2 and parts[1] in _PURE_OPERATORS:
        return None
    if parts[:2] == ["torch", "ops"] and len(parts) >= 4:
        ns, op = parts[2], parts[3]
        if op in FILE_OPS:
            return Use("code-file-access", "critical", target, "graph",
                       f"calls {target}, which creates, reads or writes a file the model names")
        if ns not in SAFE_NAMESPACES:
            return Use("code-native-op", "high", target, "graph",
                       f"calls {target} from the operator namespace '{ns}', which only a native library provides")
        return None
    if parts[0] == "torch" and len(parts) == 2 and parts[1].startswith(("sym_", "_sym_")):
        return None  # symbolic-shape helpers (torch.sym_int, torch.sym_max, ...)
    severity = "critical" if _ESCAPES.intersection(parts[1:]) else "high"
    return Use("code-python-call", severity, target, "graph",
               f"calls the Python function {target}, not a registered tensor operator")
