"""Read an intermediate value of a model in any gradient-access format, without Python hooks.

Eager modules: a forward hook on the named sub-module. TorchScript: the forward graph is inlined (each node keeps
its module hierarchy), the value entering or leaving the named module becomes the graph's only output, and the
rewritten graph is compiled into a function called with the loaded module. torch.export (`.pt2`): the unlifted
graph module is copied and its output node rewired to the node chosen by `nn_module_stack`. Layer names are the
model's own (`named_modules()` of the model that was saved), never those of Bastion's wrappers.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable

import torch
from torch import nn

from bastion.core.errors import ParameterError

Reader = Callable[[torch.Tensor], torch.Tensor]
_SKIPPED = ("prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::TupleConstruct")


def unwrap(model: nn.Module) -> nn.Module:
    """The loaded module inside Bastion's PlainModule wrappers (the names users know)."""
    from bastion.models.torch_backend import PlainModule

    while isinstance(model, PlainModule):
        model = model.inner
    return model


def is_exported(model: nn.Module) -> bool:
    """True for the graph module of a loaded torch.export program (its nodes carry `nn_module_stack`)."""
    return isinstance(model, torch.fx.GraphModule) and any(
        "nn_module_stack" in n.meta for n in model.graph.nodes)


def layers(model: nn.Module) -> list[tuple[str, str]]:
    """(name, class name) of every named layer in forward order where known, for any format."""
    model = unwrap(model)
    if isinstance(model, torch.jit.ScriptModule):
        return [(n, m.original_name) for n, m in model.named_modules() if n]
    if is_exported(model):
        seen: dict[str, str] = {}
        for node in model.graph.nodes:
            if node.op == "call_function":
                for path, kind in (node.meta.get("nn_module_stack") or {}).values():
                    if path:
                        seen.setdefault(path, str(kind).rsplit(".", 1)[-1])
        return list(seen.items())
    return [(n, type(m).__name__) for n, m in model.named_modules() if n]


def _inside(path: str, layer: str) -> bool:
    return path == layer or path.startswith(layer + ".")


def _ts_path(node: torch._C.Node) -> str:
    """`features(Sequential).0(Conv2d).SELF(Conv2d)` → `features.0`."""
    names = [re.sub(r"\(.*\)$", "", part) for part in node.getModuleHierarchy().split(".") if part]
    return ".".join(n for n in names if n not in ("SELF", "UNKNOWN_INSTANCE", "TOP"))


def _torchscript_reader(model: torch.jit.ScriptModule, layer: str, read_input: bool) -> Reader:
    graph = model.forward.graph.copy()
    torch._C._jit_pass_inline(graph)
    nodes = list(graph.nodes())
    member = {n: _inside(_ts_path(n), layer) for n in nodes}
    chosen = None
    for node in nodes:
        if node.kind() in _SKIPPED:
            continue
        if read_input and member[node]:
            outside = [v for v in node.inputs() if v.type().kind() == "TensorType"
                       and (v.node().kind() == "prim::Param" or not member.get(v.node(), False))
                       and v.node().kind() not in _SKIPPED]
            if outside:
                chosen = outside[0]
                break
        if not read_input and member[node]:
            for v in node.outputs():
                if v.type().kind() == "TensorType" and any(
                        u.user.kind() == "prim::Return" or not member.get(u.user, False) for u in v.uses()):
                    chosen = v  # keep the last value that leaves the layer
    if chosen is None:
        raise ParameterError(f"layer {layer!r} has no tensor {'input' if read_input else 'output'} in the graph")
    for i in reversed(range(len(list(graph.outputs())))):
        graph.eraseOutput(i)
    graph.registerOutput(chosen)
    function = torch._C._create_function_from_graph("bastion_read_" + re.sub(r"\W", "_", layer), graph)
    return lambda x: function(model._c, x)


def _export_reader(model: torch.fx.GraphModule, layer: str, read_input: bool) -> Reader:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation inside deepcopy
        rewritten = copy.deepcopy(model)
    nodes = [n for n in rewritten.graph.nodes if n.op == "call_function"]

    def member(node: torch.fx.Node) -> bool:
        return node.op == "call_function" and any(
            _inside(path, layer) for path, _ in (node.meta.get("nn_module_stack") or {}).values())

    chosen = None
    for node in nodes:
        if read_input and member(node):
            outside = [a for a in node.all_input_nodes if a.op in ("placeholder", "call_function") and not member(a)]
            if outside:
                chosen = outside[0]
                break
        if not read_input and member(node) and any(not member(u) for u in node.users):
            chosen = node
    if chosen is None:
        raise ParameterError(f"layer {layer!r} has no tensor {'input' if read_input else 'output'} in the graph")
    output = next(n for n in rewritten.graph.nodes if n.op == "output")
    output.args = ((chosen,),) if isinstance(output.args[0], (tuple, list)) else (chosen,)
    rewritten.graph.eliminate_dead_code()
    rewritten.recompile()
    return rewritten


def _eager_reader(model: nn.Module, layer: str, read_input: bool) -> Reader:
    module = dict(model.named_modules())[layer]

    def read(x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        hook = module.register_forward_hook(lambda _m, i, o: captured.append(i[0] if read_input else o))
        try:
            model(x)
        finally:
            hook.remove()
        return captured[-1]

    return read


def reader(model: nn.Module, layer: str, read_input: bool = False) -> Reader:
    """A function x ↦ the value entering (`read_input`) or leaving layer `layer` of `model`, any format."""
    inner = unwrap(model)
    names = [n for n, _ in layers(inner)]
    if layer not in names:
        raise ParameterError(f"no layer named {layer!r}; layers are {', '.join(names)}")
    if isinstance(inner, torch.jit.ScriptModule):
        return _torchscript_reader(inner, layer, read_input)
    if is_exported(inner):
        return _export_reader(inner, layer, read_input)
    return _eager_reader(inner, layer, read_input)
