"""Judge a Jinja2 chat template on its parsed syntax tree, never on its text.

Server-side template injection walks Python internals through attribute access: `x.__class__`, `x['__cl'~'ass__']`,
`x|attr('\\x5f\\x5fclass\\x5f\\x5f')`, `xs|map(attribute='__init__')`. Jinja2 resolves `x[key]` by falling back to
`getattr`, so a computed key is a computed attribute. The checks follow the attack surface that Jinja2's own
`SandboxedEnvironment` guards (`is_safe_attribute`: no `_`-prefixed names; Ronacher, "jinja2.sandbox"), which runtimes
that render templates unsandboxed lack (CVE-2024-34359). Text outside `{{ }}`/`{% %}` is never judged.
"""

from __future__ import annotations

from dataclasses import dataclass

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension

# filters that read attributes named by an argument: the positions (or `attribute=`) holding the name
_ATTRIBUTE_FILTERS = {"attr": 0, "selectattr": 0, "rejectattr": 0, "groupby": 0, "map": None, "sort": None,
                      "sum": None, "unique": None, "min": None, "max": None}
_FOLDABLE_FILTERS = {"lower", "upper", "string", "trim", "replace", "join", "format", "reverse", "title",
                     "capitalize", "first", "last"}
# context variables a tokenizer config sets from its own fields (attacker-chosen strings)
_CONFIG_STRINGS = {"bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token"}


@dataclass(frozen=True)
class Problem:
    severity: str
    what: str


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}`, the block tag Hugging Face templates use to mark assistant turns."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


_ENV = jinja2.Environment(extensions=["jinja2.ext.loopcontrols", "jinja2.ext.do", _GenerationTag])


def template_problems(source: str) -> list[Problem]:
    """Everything in the template that reaches Python internals (empty for ordinary chat templates)."""
    try:
        tree = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        problems = [Problem("medium", f"is not valid Jinja2 ({exc.message}); runtimes with other parsers may "
                                      "still render it")]
        if "__" in source:
            problems.append(Problem("high", "cannot be parsed and contains '__'"))
        return problems
    except RecursionError:
        return [Problem("high", "nests too deeply to be parsed")]
    return _Judge(tree).problems


class _Judge:
    def __init__(self, tree: nodes.Template):
        self.problems: list[Problem] = []
        self.string_names = _string_bound_names(tree)
        for node in _walk(tree):
            self._node(node)

    def _flag(self, severity: str, what: str) -> None:
        problem = Problem(severity, what)
        if problem not in self.problems:
            self.problems.append(problem)

    def _node(self, node: nodes.Node) -> None:
        if isinstance(node, nodes.Getattr):
            self._attribute(node.attr, f"reads attribute {node.attr!r}")
        elif isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Slice):
            self._key(node.arg, "item")
        elif isinstance(node, nodes.Filter) and node.name in _ATTRIBUTE_FILTERS:
            self._attribute_filter(node)
        elif isinstance(node, nodes.Name) and node.name.startswith("_"):
            self._flag("high", f"reaches the hidden name {node.name!r}")
        elif isinstance(node, (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
            self._flag("high", "loads other templates from the renderer's loader")

    def _attribute(self, name: str, what: str) -> None:
        if any(part.startswith("_") for part in name.split(".")):
            self._flag("critical", f"{what}: Python internals")

    def _key(self, key: nodes.Expr, via: str) -> None:
        value = _fold(key)
        if isinstance(value, str):
            self._attribute(value, f"reads {via} {value!r}")
        elif value is None and self._computed_string(key):
            self._flag("high", f"reads an {via} whose name is computed when rendered (a computed attribute)")

    def _attribute_filter(self, node: nodes.Filter) -> None:
        position = _ATTRIBUTE_FILTERS[node.name]
        names = [kw.value for kw in node.kwargs if kw.key == "attribute"]
        if position is not None and len(node.args) > position:
            names.append(node.args[position])
        for name in names:
            self._key(name, f"attribute (|{node.name})")
            if node.name == "attr" and _fold(name) is None:
                self._flag("high", "reads an attribute (|attr) whose name is computed when rendered")

    def _computed_string(self, key: nodes.Expr) -> bool:
        """Could this key be text built at render time (rather than an index or a plain data variable)?"""
        for node in _walk(key):
            if isinstance(node, (nodes.Concat, nodes.Filter, nodes.Mod)):
                return True
            if isinstance(node, nodes.Const) and isinstance(node.value, str):
                return True
            if isinstance(node, nodes.Name) and (node.name in self.string_names or node.name in _CONFIG_STRINGS):
                return True
            if (isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name)
                    and f"{node.node.name}.{node.attr}" in self.string_names):
                return True
        return False


def _walk(tree: nodes.Node) -> list[nodes.Node]:
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(node.iter_child_nodes())
    return out


def _leaf_consts(node: nodes.Node) -> list:
    return [n.value for n in _walk(node) if isinstance(n, nodes.Const)]


def _string_bound_names(tree: nodes.Template) -> set[str]:
    """Names a `{% set %}`, `{% for %}` or macro binds to something that may be text built in the template."""
    names: set[str] = set()
    for node in _walk(tree):
        if isinstance(node, nodes.Assign) and isinstance(node.target, (nodes.Name, nodes.NSRef)):
            value = node.node
            target = node.target.name if isinstance(node.target, nodes.Name) else \
                f"{node.target.name}.{node.target.attr}"
            if isinstance(_fold(value), str) or not isinstance(value, (nodes.Const, nodes.Name, nodes.Getattr,
                                                                       nodes.Getitem, nodes.Dict, nodes.List)):
                names.add(target)
        elif isinstance(node, nodes.AssignBlock) and isinstance(node.target, nodes.Name):
            names.add(node.target.name)
        elif isinstance(node, nodes.For) and isinstance(node.iter, (nodes.List, nodes.Tuple, nodes.Const)):
            names.update(n.name for n in _walk(node.target) if isinstance(n, nodes.Name))
        elif isinstance(node, nodes.Macro):
            names.update(a.name for a in node.args)
    return names


def _fold(node: nodes.Expr) -> object:
    """The constant a small expression evaluates to (string building only), or None when it is not constant."""
    if isinstance(node, (nodes.Const, nodes.TemplateData)):
        return node.value if isinstance(node, nodes.Const) else node.data
    if isinstance(node, (nodes.List, nodes.Tuple)):
        items = [_fold(n) for n in node.items]
        return None if any(i is None for i in items) else items
    if isinstance(node, nodes.Concat):
        parts = [_fold(n) for n in node.nodes]
        return None if any(p is None for p in parts) else "".join(str(p) for p in parts)
    if isinstance(node, (nodes.Add, nodes.Mul, nodes.Mod)):
        left, right = _fold(node.left), _fold(node.right)
        if left is None or right is None:
            return None
        try:
            if isinstance(node, nodes.Add):
                return left + right  # type: ignore[operator]
            if isinstance(node, nodes.Mul):
                return left * right if isinstance(right, int) and right < 1000 else None  # type: ignore[operator]
            return left % (tuple(right) if isinstance(right, list) else right)  # type: ignore[operator]
        except (TypeError, ValueError):
            return None
    if isinstance(node, nodes.Filter) and node.name in _FOLDABLE_FILTERS and node.node is not None:
        return _fold_filter(node)
    return None


def _fold_filter(node: nodes.Filter) -> object:
    value = _fold(node.node)
    args = [_fold(a) for a in node.args]
    if value is None or any(a is None for a in args) or node.kwargs or node.dyn_args or node.dyn_kwargs:
        return None
    try:
        if node.name == "join":
            return (args[0] if args else "").join(str(v) for v in value)  # type: ignore[union-attr, attr-defined]
        if node.name == "replace":
            return str(value).replace(*[str(a) for a in args[:2]])
        if node.name == "format":
            return str(value) % tuple(args)
        if node.name == "reverse":
            return value[::-1]  # type: ignore[index]
        if node.name in ("first", "last"):
            return value[0 if node.name == "first" else -1]  # type: ignore[index]
        return {"lower": str.lower, "upper": str.upper, "string": str, "trim": str.strip, "title": str.title,
                "capitalize": str.capitalize}[node.name](str(value))
    except (TypeError, ValueError, IndexError, KeyError):
        return None
