"""Run an exported cache-aware model with ONNX Runtime, holding its cache state between calls.

`OrtSession(path)` is called like the original model (same argument names, same return structure, torch
tensors in and out), so the diffusion-forcing sampler drives it unchanged: `cache_context(name)` keeps one
state per CFG branch, `reset_cache()` starts a new generation, `record_decisions()` keeps what each call
decided (read from the graph's `mcgraph_recomputed` / `mcgraph_executed` outputs). The state lives here, as
numpy arrays fed back into the next call: nothing is hidden in the ONNX file.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.fx._pytree as fx_pytree
import torch.utils._pytree as pytree

from mcgraph.runtime.step import StepRecord, execution_path
from mcgraph.errors import McGraphError
from mcgraph.export.onnx_export import META_KEY

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int32": np.int32,
                "int64": np.int64, "bool": np.bool_, "bfloat16": None}


class OrtSession:
    """See module docstring. `threads`: ONNX Runtime intra-op threads (None: its default)."""

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None):
        import onnx
        import onnxruntime as ort

        self.path = str(path)
        model = onnx.load(self.path, load_external_data=False)
        meta = {p.key: p.value for p in model.metadata_props}.get(META_KEY)
        if meta is None:
            raise McGraphError(f"{self.path} was not written by mcgraph.export.onnx (no {META_KEY!r} metadata)")
        self.meta = json.loads(meta)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # ORT warns about constant folding it skips; not news to users
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=providers or ["CPUExecutionProvider"])
        self.in_spec = pytree.treespec_loads(self.meta["in_spec"])
        self.out_spec = pytree.treespec_loads(self.meta["out_spec"]) if self.meta["out_spec"] else None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._states: dict[str, list[np.ndarray]] = {}
        self._context = "default"
        self._record = False
        self.decision_records: list[StepRecord] = []

    # ------------------------------------------------------------------------------------ cache control
    @contextlib.contextmanager
    def cache_context(self, name: str):
        previous, self._context = self._context, str(name)
        try:
            yield self
        finally:
            self._context = previous

    def reset_cache(self) -> None:
        self._states.clear()

    def record_decisions(self, on: bool = True) -> list:
        self._record = on
        return self.decision_records

    def cache_state_bytes(self) -> int:
        return sum(a.nbytes for state in self._states.values() for a in state)

    def initial_state(self) -> list[np.ndarray]:
        out = []
        for s in self.meta["state"]:
            out.append(np.full(s["shape"], s["fill"], dtype=NUMPY_DTYPES[s["dtype"]]))
        return out

    # ------------------------------------------------------------------------------------------- call
    def _bind(self, args, kwargs) -> dict:
        names = self.meta["arg_names"]
        if len(args) > len(names):
            raise TypeError(f"{self.meta['model_class']} takes {len(names)} arguments, got {len(args)} positional")
        bound = dict(self.meta["static_args"])
        bound.update(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise TypeError(f"{self.meta['model_class']} got an unexpected argument {k!r}")
            bound[k] = v
        missing = [n for n in names if n not in bound]
        if missing:
            raise TypeError(f"{self.meta['model_class']} is missing argument(s) {missing}")
        for k, v in bound.items():
            want = self.meta["static_args"].get(k, v)
            if not isinstance(v, torch.Tensor) and v != want:
                raise McGraphError(f"argument {k!r} = {v!r} differs from the exported value {want!r}; "
                                   "non-tensor arguments are baked into the graph: export again with it")
        return {n: bound[n] for n in names}

    def __call__(self, *args, **kwargs):
        bound = self._bind(args, kwargs)
        flat = fx_pytree.tree_flatten_spec(((), bound), self.in_spec)
        feeds = {}
        for spec in self.meta["tensor_inputs"]:
            value = flat[spec["slot"]]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"input {spec['name']!r} must be a tensor, got {type(value).__name__}")
            if list(value.shape) != spec["shape"]:
                raise McGraphError(f"input {spec['name']!r} has shape {list(value.shape)}; {self.path} was exported "
                                   f"for {spec['shape']} (export again with example inputs of this shape)")
            array = value.detach().cpu().numpy()
            if spec["name"] == self.meta["latent_input"] and np.isnan(array).any():
                raise ValueError(f"{self.meta['model_class']}: input {spec['name']!r} contains NaN")
            feeds[spec["name"]] = array
        context = self._context
        state = self._states.get(context)
        if state is None:
            state = self.initial_state()
        for s, value in zip(self.meta["state"], state):
            feeds[f"state_{s['name']}"] = value
        results = self.session.run(None, feeds)
        n_out = self.meta["num_outputs"]
        outputs = [torch.from_numpy(r) for r in results[:n_out]]
        recomputed, executed = results[n_out], int(results[n_out + 1])
        self._states[context] = results[n_out + 2:]
        if self._record:
            tokens = self.meta["tokens"]
            self.decision_records.append(StepRecord(context, torch.from_numpy(recomputed), executed, tokens,
                                                    self.meta["frames"], execution_path(executed, tokens)))
        if self.out_spec is None:
            return tuple(outputs)
        return pytree.tree_unflatten(outputs, self.out_spec)
