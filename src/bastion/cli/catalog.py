"""What the registry holds, read from the source without importing it.

`bastion list` and `bastion attack FAMILY NAME --help` must answer in well under a second, and importing the
attacks imports torch (seconds). So this module parses the registry's packages with `ast`: each `@register(...)`
class gives its kind, family, name and summary; its `__init__` signature (or an ancestor's, followed through the
module's imports) gives each parameter's type and default, and the sentences of the class docstrings that name a
parameter in backticks give its meaning. `tests/test_cli_discover.py` checks this against the imported registry.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

PACKAGES = {"attacks": "bastion.attacks", "defenses": "bastion.defenses", "families": "bastion.families"}
KINDS = tuple(PACKAGES)
_SENTENCE_END = re.compile(r"(?<!e\.g\.)(?<!i\.e\.)(?<=[.;])\s+(?=[A-Z`(])")
# Meanings of the parameters that many classes share, used where a class's docstrings do not name one.
COMMON = {
    "eps": "perturbation budget(s) in input units; a comma list runs each",
    "norm": "norm of the perturbation budget: linf, l2 or l1",
    "seed": "random seed; the same seed gives the same result",
    "steps": "optimisation steps (iterations) per run",
    "restarts": "random restarts; each runs only on samples not yet fooled",
    "batch_size": "training batch size",
    "lr": "learning rate",
    "epochs": "training epochs",
    "optimizer": "training optimiser: adam, adamw or sgd",
    "momentum": "SGD momentum",
    "weight_decay": "L2 weight decay of the training optimiser",
    "arch": "module:factory (or file.py:factory) that builds the model's architecture for training copies",
    "n_jobs": "parallel training jobs (default: what the machine allows)",
    "budget": "query budget(s); a comma list builds one copy per budget",
    "n_bootstrap": "bootstrap resamples for the confidence intervals",
    "compact_every": "drop fooled samples from the active batch every this many steps",
    "eot_samples": "Expectation over Transformation: gradient samples averaged per step (for randomised models)",
    "random_init": "start from a random point in the eps-ball",
}


@dataclass
class Parameter:
    name: str
    type: str
    default: str
    meaning: str = ""


@dataclass
class Entry:
    kind: str
    family: str
    name: str
    summary: str
    module: str
    cls: str
    parameters: list[Parameter] = field(default_factory=list)


_ROOT = Path(__file__).resolve().parents[1]  # the bastion package; find_spec would import parent packages


def _package_dir(package: str) -> Path | None:
    path = _ROOT.joinpath(*package.split(".")[1:])
    return path if path.is_dir() else None


def _module_path(module: str) -> Path | None:
    if module.split(".")[0] != "bastion":
        return None
    base = _ROOT.joinpath(*module.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _literal(node: ast.expr | None) -> str:
    if node is None:
        return ""
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)
    return "" if value is None and not isinstance(node, ast.Constant) else str(value)


def _register_call(cls: ast.ClassDef) -> ast.Call | None:
    for deco in cls.decorator_list:
        if isinstance(deco, ast.Call) and getattr(deco.func, "id", getattr(deco.func, "attr", "")) == "register":
            return deco
    return None


def _imports(tree: ast.Module, module: str) -> dict[str, tuple[str, str]]:
    """Local name -> (module, name) for the `from X import Y` lines of a module."""
    out: dict[str, tuple[str, str]] = {}
    package = module.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{source}" if source else base
            for alias in node.names:
                out[alias.asname or alias.name] = (source, alias.name)
    return out


def _find_class(module: str, name: str) -> tuple[str, ast.ClassDef] | None:
    """The class `name` as defined in (or imported into) `module`."""
    path = _module_path(module)
    if path is None:
        return None
    tree = _parse(path)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
    source = _imports(tree, module).get(name)
    return _find_class(*source) if source and source[0].startswith("bastion") else None


def _lineage(module: str, cls: ast.ClassDef) -> list[tuple[str, ast.ClassDef]]:
    """The class and its ancestors inside bastion, nearest first (first base first, as the MRO mostly goes)."""
    chain, todo, seen = [], [(module, cls)], set()
    while todo:
        mod, node = todo.pop(0)
        if (mod, node.name) in seen:
            continue
        seen.add((mod, node.name))
        chain.append((mod, node))
        for base in node.bases:
            name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
            found = _find_class(mod, name) if name else None
            if found:
                todo.append(found)
    return chain


def _init_of(node: ast.ClassDef) -> ast.FunctionDef | None:
    return next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)


def _signature(chain: list[tuple[str, ast.ClassDef]]) -> list[Parameter]:
    """Parameters of the first `__init__` up the chain; `**kwargs` pulls in the next ancestor's."""
    params: list[Parameter] = []
    for _, node in chain:
        init = _init_of(node)
        if init is None:
            continue
        args = init.args
        positional = args.posonlyargs + args.args
        defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
        pairs = list(zip(positional, defaults, strict=True)) + list(zip(args.kwonlyargs, args.kw_defaults,
                                                                         strict=True))
        known = {p.name for p in params}
        for arg, default in pairs:
            if arg.arg in ("self", "cls") or arg.arg in known:
                continue
            params.append(Parameter(arg.arg, ast.unparse(arg.annotation) if arg.annotation else "",
                                    _literal(default) if default is not None else "(required)"))
        if args.kwarg is None:
            break
    return params


def _meanings(chain: list[tuple[str, ast.ClassDef]], params: list[Parameter]) -> None:
    """Fill each parameter's meaning from the first docstring sentence that names it in backticks."""
    sentences = []
    for _, node in chain:
        doc = ast.get_docstring(node) or ""
        init = _init_of(node)
        doc += "\n\n" + ((ast.get_docstring(init) or "") if init else "")
        for paragraph in re.split(r"\n\s*\n", doc):
            sentences += [" ".join(s.split()) for s in _SENTENCE_END.split(paragraph) if s.strip()]
    for param in params:
        mark = re.compile(rf"`{re.escape(param.name)}`|^{re.escape(param.name)}\b|--{param.name.replace('_', '-')}\b")
        param.meaning = next((s for s in sentences if mark.search(s)), COMMON.get(param.name, ""))


def _entries_of(module: str, path: Path, kind: str) -> list[Entry]:
    found = []
    for node in _parse(path).body:
        call = _register_call(node) if isinstance(node, ast.ClassDef) else None
        if call is None or not call.args or _literal(call.args[0]) != kind:
            continue
        keywords = {k.arg: _literal(k.value) for k in call.keywords}
        doc = (ast.get_docstring(node) or "").strip().splitlines()
        found.append(Entry(kind=kind, family=keywords.get("family", ""), name=_literal(call.args[1]),
                           summary=keywords.get("summary") or (doc[0] if doc else ""), module=module, cls=node.name))
    return found


@cache
def entries(kind: str) -> tuple[Entry, ...]:
    """Every entry registered as `kind`, sorted by family and name (parameters not yet read)."""
    root = _package_dir(PACKAGES[kind])
    if root is None:
        return ()
    rows: list[Entry] = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        module = ".".join((PACKAGES[kind], *[p for p in parts if p != "__init__"]))
        if "register(" in path.read_text(encoding="utf-8"):
            rows += _entries_of(module, path, kind)
    return tuple(sorted(rows, key=lambda e: (e.family, e.name)))


def find(name: str, family: str | None = None, kinds: tuple[str, ...] = KINDS) -> list[Entry]:
    """Entries called `name` (optionally of one family), with their parameters read."""
    matches = [e for k in kinds for e in entries(k) if e.name == name and (family is None or e.family == family)]
    for entry in matches:
        if not entry.parameters:
            located = _find_class(entry.module, entry.cls)
            if located:
                chain = _lineage(*located)
                entry.parameters = _signature(chain)
                _meanings(chain, entry.parameters)
    return matches
