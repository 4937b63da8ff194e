"""The import graph of src/bastion goes only down the layers, and no two units import each other (issue 15).

Every `import`/`from ... import` is read with `ast`, at module level and inside functions alike (a lazy import is
still a dependency). Each module belongs to the unit named by the longest prefix in LAYERS; an import may go to
a unit of the same or a lower level, and the graph of units must have no cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# unit (module prefix under `bastion.`) -> level; an import may only go to the same or a lower level.
LAYERS: dict[str, int] = {
    # 0 -- the contracts every layer shares: Target, Dataset, Result, registry, parameters, the training loop
    "core": 0,
    # 1 -- reading models and files: loaders and the static supply-chain scanner; language-model targets (lm/)
    #      are loaders of the same kind
    "models": 1, "supplychain": 1, "lm": 1,
    # 2 -- measurement pieces the attacks report through. evaluation: the one metrics module and the sanity checks
    #      (core only). defenses.base / postprocess / detect.prada: the Defense contract, the output-hardening
    #      views an extraction attack queries through (`defense="rounding:2"`) and the PRADA query monitor; they
    #      import core only.
    "evaluation": 2, "defenses.base": 2, "defenses.postprocess": 2, "defenses.detect.prada": 2,
    # 3 -- attacks of every family (availability attacks live under attacks/ too, as do attacks/llm)
    "attacks": 3,
    # 4 -- defenses that train, detect, repair and certify against attacks (adversarial training runs PGD)
    "defenses": 4,
    # 5 -- families and the assessment: plans, jobs, judging findings
    "families": 5, "assess": 5,
    # 6 -- what reads or runs an assessment: reports, the run store, and the sandbox (its worker runs attack,
    #      defend and assessment jobs, so it sits above them; the CLI and the runner hand work to it)
    "report": 6, "store": 6, "sandbox": 6,
    # 7 -- the faces: command line and the embedded demo; `python -m bastion`
    "cli": 7, "demo": 7, "__main__": 7,
    # guard: the protected inference service, a face like the CLI; it serves a model through the sandbox (6) and
    # applies defenses (4, 2) per request
    "guard": 7,
}

# Edges that must not exist even though they go down: a report reads the Assessment, never probe internals.
FORBIDDEN: list[tuple[str, str]] = [("report", "assess.probes")]  # (report/plots read probe internals before)

# Known offenders: none. The sandboxed backend and job runner and the run store are injected from the CLI (the
# runner and the API take them as arguments), so an upward edge fails the test.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> set[str]:
    """Every bastion module `path` imports, at any depth of its code (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            # `from bastion.x import y` may import the submodule bastion.x.y
            found.update(f"{stem}.{alias.name}" for alias in node.names
                         if (SRC / Path(*f"{stem}.{alias.name}".split("."))).exists()
                         or (SRC / Path(*f"{stem}.{alias.name}".split("."))).with_suffix(".py").exists())
    return {name for name in found if name == "bastion" or name.startswith("bastion.")}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p, module_name(p)) for p in sorted((SRC / "bastion").rglob("*.py"))}


def unit_of(module: str) -> str | None:
    """The longest LAYERS prefix of `module` (None for the root package `bastion`, a lazy facade)."""
    rest = module.removeprefix("bastion").removeprefix(".")
    best = None
    for unit in LAYERS:
        if (rest == unit or rest.startswith(unit + ".")) and (best is None or len(unit) > len(best)):
            best = unit
    return best


def test_every_module_has_a_layer():
    missing = sorted(m for m in graph() if m != "bastion" and unit_of(m) is None)
    assert not missing, f"modules outside the layer table (add their unit to LAYERS): {missing}"


def test_imports_only_go_down():
    upward = []
    for module, targets in graph().items():
        for target in targets:
            a, b = unit_of(module), unit_of(target)
            if a is None or b is None or (module, target) in KNOWN_UPWARD:
                continue
            too_high = LAYERS[b] > LAYERS[a]
            forbidden = any(a.startswith(src) and target.removeprefix("bastion.").startswith(dst)
                            for src, dst in FORBIDDEN)
            if too_high or forbidden:
                upward.append(f"{module} ({a}, {LAYERS[a]}) -> {target} ({b}, {LAYERS[b]})")
    assert not upward, "imports that go up the layers:\n" + "\n".join(sorted(upward))


def test_no_cycle_between_units():
    edges: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph().items():
        for target in targets:
            a, b = unit_of(module), unit_of(target)
            if a and b and a != b and (module, target) not in KNOWN_UPWARD:
                edges[a].add(b)
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"units that import each other: {cycles}"


def test_known_offenders_still_exist():
    """An entry of KNOWN_UPWARD that no longer exists must leave the list (so the list only shrinks)."""
    g = graph()
    stale = sorted(f"{a} -> {b}" for a, b in KNOWN_UPWARD if b not in g.get(a, set()))
    assert not stale, f"remove from KNOWN_UPWARD, the edge is gone: {stale}"


def test_the_checker_sees_function_level_and_upward_imports(tmp_path):
    """The checker itself: a lazy import inside a function is found and judged by its layer."""
    pkg = tmp_path / "bastion" / "core"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from bastion.cli.common import emit\n    return emit\n")
    found = imports_of(pkg / "x.py", "bastion.core.x")
    assert "bastion.cli.common" in found
    assert LAYERS[unit_of("bastion.cli.common")] > LAYERS[unit_of("bastion.core.x")]
