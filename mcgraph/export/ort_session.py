"""Run an exported cache-aware model with ONNX Runtime, holding its cache state between calls.

`OrtSession(path)` is called like the original model (same argument names, same return structure, torch
tensors in and out), so the diffusion-forcing sampler drives it unchanged. It is a thin adapter over the
runtime's `CacheSession` (the same one eager and compiled models use): `cache_context(name)` keeps one
state per CFG branch, `reset_cache()` starts a new generation, `record_decisions()` keeps what each call
decided (read from the graph's `mcgraph_recomputed` / `mcgraph_executed` outputs), non-finite inputs are
refused and the memory budget holds. The state is numpy arrays fed back into the next call: nothing is
hidden in the ONNX file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.fx._pytree as fx_pytree
import torch.utils._pytree as pytree

from mcgraph.errors import McGraphError
from mcgraph.export.onnx_export import META_KEY
from mcgraph.runtime.session import CacheSession, SessionControls
from mcgraph.runtime.step import StepResult

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int32": np.int32,
                "int64": np.int64, "bool": np.bool_, "bfloat16": None}


class OrtRunner:
    """One ONNX Runtime call of the exported step, for the session (state: the list of numpy arrays)."""

    def __init__(self, owner: OrtSession):
        self.owner = owner

    def run(self, flat, state):
        meta = self.owner.meta
        feeds = self.owner.feeds(flat)
        for s, value in zip(meta["state"], state if state is not None else self.owner.initial_state()):
            feeds[f"state_{s['name']}"] = value
        results = self.owner.ort.run(None, feeds)
        n_out = meta["num_outputs"]
        return StepResult([torch.from_numpy(r) for r in results[:n_out]], torch.from_numpy(results[n_out]),
                          int(results[n_out + 1]), results[n_out + 2:], meta["frames"], meta["tokens"])

    def state_bytes(self, flat) -> int:
        return int(self.owner.meta.get("state_bytes", 0))


class OrtSession(SessionControls):
    """See module docstring. `threads`: ONNX Runtime intra-op threads (None: its default)."""

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None,
                 cache: CacheSession | None = None):
        import onnx
        import onnxruntime as ort

        self.path = str(path)
        if not Path(self.path).is_file():
            raise McGraphError(f"{self.path}: no such ONNX file")
        try:
            model = onnx.load(self.path, load_external_data=False)
        except Exception as exc:  # protobuf decode errors name neither the file nor the cause
            raise McGraphError(f"{self.path} is not a readable ONNX model (empty, truncated or corrupt: "
                               f"{type(exc).__name__}: {str(exc)[:200]})") from exc
        meta = {p.key: p.value for p in model.metadata_props}.get(META_KEY)
        if meta is None:
            raise McGraphError(f"{self.path} was not written by mcgraph.export.onnx (no {META_KEY!r} metadata)")
        self.meta = json.loads(meta)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # ORT warns about constant folding it skips; not news to users
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.ort = ort.InferenceSession(self.path, options, providers=providers or ["CPUExecutionProvider"])
        self.in_spec = pytree.treespec_loads(self.meta["in_spec"])
        self.out_spec = pytree.treespec_loads(self.meta["out_spec"]) if self.meta["out_spec"] else None
        self.input_names = [i.name for i in self.ort.get_inputs()]
        self.output_names = [o.name for o in self.ort.get_outputs()]
        slots = {spec["slot"]: spec["name"] for spec in self.meta["tensor_inputs"]}
        flat_names = [slots.get(i, f"input_{i}") for i in range(self.meta["flat_inputs"])]
        # `cache`: a session shared with other exported shapes of the same model (one file per window length)
        self.cache_session = cache or CacheSession(f"{self.meta['model_class']} (ONNX Runtime, {Path(self.path).name})",
                                           flat_names, max_cache_bytes=self.meta.get("max_cache_bytes"))
        self.runner = OrtRunner(self)

    # ------------------------------------------------------------------------------------------ state
    def initial_state(self) -> list[np.ndarray]:
        return [np.full(s["shape"], s["fill"], dtype=NUMPY_DTYPES[s["dtype"]]) for s in self.meta["state"]]

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

    def check_inputs(self, flat) -> None:
        """The model's tensor inputs have the exported shapes (a call of other shapes needs another export)."""
        for spec in self.meta["tensor_inputs"]:
            value = flat[spec["slot"]]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"input {spec['name']!r} must be a tensor, got {type(value).__name__}")
            if list(value.shape) != spec["shape"]:
                raise McGraphError(f"input {spec['name']!r} has shape {list(value.shape)}; {self.path} was exported "
                                   f"for {spec['shape']} (export again with example inputs of this shape)")

    def feeds(self, flat) -> dict:
        """ONNX Runtime's feeds of the model's tensor inputs (checked by `check_inputs`)."""
        return {spec["name"]: flat[spec["slot"]].detach().cpu().numpy() for spec in self.meta["tensor_inputs"]}

    def __call__(self, *args, **kwargs):
        flat = fx_pytree.tree_flatten_spec(((), self._bind(args, kwargs)), self.in_spec)
        self.check_inputs(flat)  # before the session: a wrong shape must not reset the context's state
        outputs = self.cache_session.call(flat, self.runner)
        if self.out_spec is None:
            return tuple(outputs)
        return pytree.tree_unflatten(outputs, self.out_spec)
