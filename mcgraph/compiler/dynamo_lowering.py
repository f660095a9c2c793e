"""Lower the graph dynamo hands a torch.compile backend into mcgraph's IR.

Dynamo's graph takes the weights and symbolic sizes as inputs. `lower` wraps it in a module that owns the
weights, takes only the user's tensor inputs (by name) and replays dynamo's graph node by node under
`preserve_node_meta`, so that `mcgraph.capture` (non-strict export) sees dynamo's `nn_module_stack` on every
ATen node, normalised from `L['self'].__dict__['_modules']['blocks'].0` to `blocks.0`: the same analyses
then find the blocks.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch._guards
import torch.fx
import torch.fx.traceback as fx_traceback

from mcgraph.errors import ConfigError

_MODULES = re.compile(r"\.__dict__\['_modules'\]\['([^']+)'\]")
_ITEM = re.compile(r"\['([^']+)'\]|\[(\d+)\]")
_ROOT = re.compile(r"^L\.[A-Za-z_]\w*\.?")

KNOWN_OPTIONS = ("config", "backend", "dump_dir")


def normalise_module_path(path: str) -> str:
    """Dynamo's source path of a submodule ("L['self'].__dict__['_modules']['blocks'].0") -> "blocks.0"."""
    path = _MODULES.sub(r".\1", str(path))
    path = _ITEM.sub(lambda m: "." + (m.group(1) or m.group(2)), path)
    return _ROOT.sub("", path).strip(".")


def _is_module_state(name: str, value: Any) -> bool:
    # dynamo names the compiled module's attributes l_self_...: weights, buffers, and (with dynamic=True)
    # float attributes such as norm eps lifted to 0-d tensors; globals are g_...
    return isinstance(value, torch.nn.Parameter) or name.startswith(("l_self_", "g_"))


class DynamoGraphModule(torch.nn.Module):
    """Dynamo's graph as a module that owns the weights and takes only the user's tensor inputs (by name);
    the symbolic sizes dynamo passes as extra inputs are read off those tensors' shapes."""

    def __init__(self, gm: torch.fx.GraphModule, example_inputs: list):
        super().__init__()
        self.gm = gm
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(example_inputs):
            raise ConfigError(f"dynamo graph has {len(placeholders)} inputs but {len(example_inputs)} examples")
        dims = {}  # symbol name -> (input name, dim): where each symbolic size can be read
        for node in placeholders:
            fake = node.meta.get("example_value")
            if isinstance(fake, torch.Tensor) and not _is_module_state(node.name, fake):
                for d, size in enumerate(fake.shape):
                    if isinstance(size, torch.SymInt):
                        dims.setdefault(str(size), (node.name, d))
        self.slots: list[tuple[str, Any]] = []  # ("weight", attr) | ("input", name) | ("size", (input, dim))
        for i, (node, value) in enumerate(zip(placeholders, example_inputs)):
            if isinstance(value, torch.SymInt) or (isinstance(value, int) and not isinstance(value, bool)):
                symbol = str(node.meta.get("example_value", value))
                if symbol not in dims:
                    raise ConfigError(f"backend 'mcgraph': dynamo input {node.name!r} is a size ({symbol}) that no "
                                      "tensor input's shape carries")
                self.slots.append(("size", dims[symbol]))
            elif isinstance(value, torch.Tensor) and _is_module_state(node.name, value):
                attr = f"w{i}"
                if isinstance(value, torch.nn.Parameter):
                    self.register_parameter(attr, value)
                else:
                    self.register_buffer(attr, value, persistent=False)
                self.slots.append(("weight", attr))
            elif isinstance(value, torch.Tensor):
                self.slots.append(("input", node.name))
            else:
                raise ConfigError(f"backend 'mcgraph': unsupported dynamo graph input {node.name!r} "
                                  f"({type(value).__name__})")
        self.input_names = [name for kind, name in self.slots if kind == "input"]
        self._fold_scalar_attributes(placeholders, example_inputs)
        if not dims:
            raise ConfigError("backend 'mcgraph' needs symbolic shapes to find the token axis: call "
                              "torch.compile(model, backend='mcgraph', dynamic=True)")

    def _fold_scalar_attributes(self, placeholders, example_inputs) -> None:
        """dynamic=True lifts float attributes (norm eps) to 0-d tensor inputs read with .item(); export would
        see a data-dependent value there. They are constants of the module: put the value back."""
        for node, value in zip(placeholders, example_inputs):
            if not (isinstance(value, torch.Tensor) and value.dim() == 0 and _is_module_state(node.name, value)
                    and not isinstance(value, torch.nn.Parameter)):
                continue
            for user in list(node.users):
                if user.op == "call_method" and user.target == "item":
                    user.replace_all_uses_with(value.item())
                    self.gm.graph.erase_node(user)
        self.gm.recompile()

    def replay(self, *inputs):
        given = dict(zip(self.input_names, inputs))
        args = []
        for kind, ref in self.slots:
            if kind == "weight":
                args.append(getattr(self, ref))
            elif kind == "input":
                args.append(given[ref])
            else:
                args.append(given[ref[0]].shape[ref[1]])
        with fx_traceback.preserve_node_meta():  # the exporter copies each dynamo node's module stack
            return torch.fx.Interpreter(self.gm).run(*args)


def lower(gm: torch.fx.GraphModule, example_inputs: list) -> tuple[torch.nn.Module, dict]:
    """(module with a named-argument forward, example keyword inputs) for `mcgraph.optimize`."""
    base = DynamoGraphModule(gm, example_inputs)
    names = base.input_names
    namespace: dict[str, Any] = {}
    # export binds inputs by the forward's signature: give it dynamo's input names as parameters
    exec(f"def forward(self, {', '.join(names)}):\n    return self.replay({', '.join(names)})", namespace)
    cls = type("DynamoGraph", (DynamoGraphModule,), {"forward": namespace["forward"]})
    module = cls.__new__(cls)
    module.__dict__.update(base.__dict__)
    user = iter(v for (kind, _), v in zip(base.slots, example_inputs) if kind == "input")
    # copies: capturing marks its example tensors' dims dynamic, and these are the caller's tensors, which
    # dynamo guards right after this backend returns
    return module, {name: next(user).detach().clone() for name in names}




def capture_lowered(gm: torch.fx.GraphModule, example_inputs: list):
    """(lowered module, its captured graph with normalised module paths) for a dynamo graph."""
    from mcgraph.compiler.capture import capture

    module, example = lower(gm, example_inputs)
    # a fresh tracing context: otherwise export's shape guards land in the frame dynamo is compiling
    with torch._guards.tracing(None), torch._guards.compile_context(None):
        captured = capture(module, (), example)
    graph_module = captured.graph_module
    for node in list(graph_module.graph.nodes):
        # export's input guard re-checks dynamo's own shape guards, written against dynamo's sources (L[...]),
        # which do not exist here; dynamo keeps guarding the call itself
        if node.op == "call_module" and node.target == "_guards_fn":
            graph_module.graph.erase_node(node)
    graph_module.recompile()
    for node in graph_module.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            node.meta["nn_module_stack"] = {k: (normalise_module_path(p), c) for k, (p, c) in stack.items()}
    return module, captured
