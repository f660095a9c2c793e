"""Export a cache-aware model as one ONNX file whose cache state is explicit inputs and outputs.

The exported graph is `StepGraph` (see `mcgraph/step_graph.py`):

    inputs:  the model's tensor inputs (its flat argument names), then `state_<name>` for every state tensor
    outputs: `output_<i>` (the model's outputs, flattened), `mcgraph_recomputed` [B, L] bool (the tokens the
             policy chose), `mcgraph_executed` [] int64 (tokens run through the blocks: 0 = skip), then
             `new_state_<name>`, to be fed back as `state_<name>` on the context's next call.

The reuse decision is in the graph: nested `If` nodes pick skip / a capacity bucket / the full stack, and
TopK + Gather + ScatterElements (index_copy) run the token subset. Shapes are those of the example inputs
(static): a call with other shapes needs another export. Everything a runner needs to bind arguments and
initialise the state is in the model's metadata (`mcgraph.meta`, JSON), documented per tensor in the
graph's doc strings. `mcgraph.export.OrtSession` is that runner.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.utils._pytree as pytree

from mcgraph.compiler.verifier import verify_graph
from mcgraph.errors import ConfigError, McGraphError, VerificationError
from mcgraph.runtime.step_graph import DECISION_OUTPUTS, StepGraph

META_KEY = "mcgraph.meta"
META_VERSION = 1

STATE_DOCS = {
    "indicator": "block 0's modulated input at the context's last call [B, L, C]: the per-token change is measured on it",
    "acc": "accumulated distance per token since it was last computed [B, L]",
    "computes": "how often each token was computed [B, L] int32 (0 before the first call)",
    "weights": "motion weights per token [B, L] (MotionCache; 1 otherwise)",
    "residual": "cached block-stack residual h_L - h_0 per token [B, L, D]",
    "timesteps": "each token's timestep at the last call [B, L] (+inf before the first call)",
    "instability": "observed residual change per token (motion_source='residual') [B, L]",
}
STATE_FILL = {"weights": 1.0, "timesteps": float("inf")}  # everything else starts at zero


class ExportError(McGraphError):
    """The model could not be exported; the message names the stage and the cause."""


@dataclass
class ExportInfo:
    path: str
    seconds: float
    bytes: int
    nodes: int  # all nodes, inside If branches too
    top_level_nodes: int
    op_counts: dict
    inputs: list
    outputs: list
    state: list

    def summary(self) -> str:
        ops = ", ".join(f"{k} {self.op_counts.get(k, 0)}" for k in ("If", "TopK", "Gather", "ScatterElements",
                                                                     "ScatterND", "MatMul"))
        return (f"{self.path}: {self.bytes / 2**20:.1f} MiB, {self.nodes} nodes ({self.top_level_nodes} top level; "
                f"{ops}), {len(self.state)} state tensors, exported in {self.seconds:.1f} s")


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(_jsonable(v) is not _UNSET for v in value):
        return [_jsonable(v) for v in value]
    return _UNSET


_UNSET = object()


def export_onnx(model, path: str | Path, *example_args, example_kwargs: dict | None = None,
                buckets: tuple[float, ...] | None = None, optimize: bool = False, check: bool = True) -> ExportInfo:
    """Write `model` (a caching `mcgraph.optimize` result) to `path` as one ONNX model; see module docstring.

    Example inputs fix the exported shapes; without them the capture's example inputs are used.
    `buckets`: capacity buckets (fractions of the token count), default the config's or
    `mcgraph.runtime.step_graph.DEFAULT_GRAPH_BUCKETS`.
    """
    import onnx

    from mcgraph.runtime.optimized import OptimizedModule

    if not isinstance(model, OptimizedModule):
        raise ConfigError(f"export needs the result of mcgraph.optimize(...), got {type(model).__name__}")
    if not model.mcgraph_config.caches:
        raise ConfigError(f"export needs a caching config (the model was optimised with "
                          f"{type(model.mcgraph_config).__name__}); export the original with torch.onnx.export")
    if example_args or example_kwargs:
        spec, bound, flat = model.specialisation_for(*example_args, **(example_kwargs or {}))
    else:
        spec, bound, flat = model.specialisation_for(**model.latest.captured.example_bound)
    step = spec.step
    t0 = time.perf_counter()
    graph = StepGraph(step, flat, buckets).eval()
    state = graph.initial_state(flat)
    tensor_slots = [i for i, v in enumerate(flat) if isinstance(v, torch.Tensor)]
    names_in = [step.graphs.input_names[i] for i in tensor_slots] + [f"state_{n}" for n in graph.state_names]
    names_out = graph.output_names()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), quiet_export():
            exported = torch.export.export(graph, tuple(flat) + tuple(state), strict=False)
            verify_graph(exported.graph_module, "step_graph (exported)")
            program = torch.onnx.export(exported, dynamo=True, input_names=names_in, output_names=names_out,
                                        optimize=optimize, verbose=False)
    except VerificationError:
        raise
    except Exception as exc:
        raise ExportError(f"exporting {spec.captured.model_class} ({type(step.config).__name__}) to ONNX failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    proto = program.model_proto
    got_in, got_out = [v.name for v in proto.graph.input], [v.name for v in proto.graph.output]
    if got_in != names_in or got_out != names_out:
        raise ExportError(f"the exported graph's interface differs from the intended one: inputs {got_in} "
                          f"(wanted {names_in}), outputs {got_out} (wanted {names_out})")
    _strip_stack_traces(proto.graph)
    _document(proto, graph, step, spec, bound, flat, tensor_slots, state, names_in, buckets=graph.buckets)
    onnx.save(proto, str(path))
    seconds = time.perf_counter() - t0
    if check:
        onnx.checker.check_model(str(path))
    counts = _op_counts(proto.graph)
    return ExportInfo(path=str(path), seconds=seconds, bytes=path.stat().st_size, nodes=sum(counts.values()),
                      top_level_nodes=len(proto.graph.node), op_counts=counts, inputs=names_in, outputs=names_out,
                      state=list(graph.state_names))


def _state_doc(name: str) -> str:
    if name in STATE_DOCS:
        return STATE_DOCS[name]
    if name.startswith("watch_"):
        return (f"input {name[len('watch_'):]!r} at the context's last call: a change forces recomputation of the "
                "sample (the indicator cannot see this input)")
    return "per-layer self-attention key/value cache [B, H, L, Dh]"


def _document(proto, graph: StepGraph, step, spec, bound, flat, tensor_slots, state, names_in, buckets) -> None:
    """Doc strings on the state inputs/outputs and the runner's metadata (JSON) on the model."""
    docs = {f"state_{n}": _state_doc(n) for n in graph.state_names}
    docs.update({f"new_state_{n}": f"the context's next {d}" for n, d in
                 ((n, docs[f"state_{n}"]) for n in graph.state_names)})
    docs["mcgraph_recomputed"] = "tokens the policy chose to recompute this call [B, L] bool"
    docs["mcgraph_executed"] = "tokens run through the blocks this call (0: whole skip; a capacity bucket; all)"
    for value in list(proto.graph.input) + list(proto.graph.output):
        if value.name in docs:
            value.doc_string = docs[value.name]
    try:
        in_spec = pytree.treespec_dumps(spec.in_spec)
    except Exception as exc:  # a custom container in the inputs: the runner cannot bind calls then
        raise ExportError(f"cannot serialise the input structure of {spec.captured.model_class}: {exc}") from exc
    try:
        out_spec = pytree.treespec_dumps(spec.out_spec)
    except Exception:  # e.g. a dataclass output: the runner returns a flat tuple
        out_spec = None
    static = {k: _jsonable(v) for k, v in bound.items() if not isinstance(v, torch.Tensor)}
    meta = {
        "version": META_VERSION,
        "model_class": spec.captured.model_class,
        "config": step.config.to_dict(),
        "buckets": list(buckets),
        "arg_names": list(bound),
        "static_args": {k: v for k, v in static.items() if v is not _UNSET},
        "in_spec": in_spec,
        "out_spec": out_spec,
        "flat_inputs": len(flat),
        "tensor_inputs": [{"name": step.graphs.input_names[i], "slot": i, "shape": list(flat[i].shape),
                           "dtype": str(flat[i].dtype).replace("torch.", "")} for i in tensor_slots],
        "latent_input": spec.structure.grid.latent_input,
        "num_outputs": graph.num_outputs,
        "tokens": graph.tokens,
        "frames": step.geometry(flat)[0],
        "max_cache_bytes": step.config.max_cache_bytes,
        "state_bytes": int(sum(t.numel() * t.element_size() for t in state)),
        "state": [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                   "fill": STATE_FILL.get(n, 0.0), "doc": docs[f"state_{n}"]} for n, t in zip(graph.state_names, state)],
    }
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)


def _strip_stack_traces(graph) -> None:
    """Drop the per-node Python stack traces: inside If branches each repeats the whole cond call with all its
    operands (tens of KB per node: 290 MB for a 5 MB model). Names and module scopes stay."""
    for node in graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                _strip_stack_traces(attr.g)
            for sub in attr.graphs:
                _strip_stack_traces(sub)


def _op_counts(graph) -> dict:
    counts: dict[str, int] = {}

    def walk(g):
        for node in g.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(graph)
    return counts


@contextlib.contextmanager
def quiet_export():
    """Silence the exporters' per-op notes (onnx_ir's empty-attribute warnings, dynamo's and onnxscript's
    logs, initializer dedup) and ONNX Runtime's constant-folding warnings: not news to users; errors show."""
    names = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._export")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


__all__ = ["DECISION_OUTPUTS", "META_KEY", "ExportError", "ExportInfo", "export_onnx"]
