"""Running a model on the other runtimes with the (unchanged) sampler: torch.compile and ONNX Runtime.

Shared by `mcgraph demo --runtime` and `mcgraph bench --runtimes`:

- `graph_config(config, buckets)`: the cache config with static capacity buckets (the graph's default,
  `DEFAULT_GRAPH_BUCKETS`, unless given). Compiled and exported models compute exactly what the eager model
  computes with the same buckets, so every comparison across runtimes uses that config on all of them.
- `compile_model(opt, backend)`: ``torch.compile(opt, fullgraph=True, dynamic=False)``.
- `OrtModel`: one ONNX Runtime session per exported input shape (a video in windows of two lengths needs
  two static-shape exports), called like the model, with the cache protocol of the sampler
  (`cache_context`, `reset_cache`, `record_decisions`, `decision_records`) forwarded to every session.
  `export_cached` builds one from `mcgraph.export.onnx` files, `export_uncached` from plain
  ``torch.onnx.export`` files of the original model (the uncached ONNX baseline).
- `reference_example(...)`: the reference model's call inputs for one window length, as the sampler makes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["ExportedFile", "OrtModel", "compile_model", "compiled_graphs", "export_cached", "export_uncached",
           "graph_config", "quiet_export", "reference_example", "window_lengths"]


def graph_config(config, buckets: Sequence[float] | None = None):
    """`config` with static capacity buckets: `buckets`, else the config's own, else DEFAULT_GRAPH_BUCKETS."""
    from mcgraph.runtime.step_graph import DEFAULT_GRAPH_BUCKETS

    chosen = tuple(buckets) if buckets is not None else (config.capacity_buckets or DEFAULT_GRAPH_BUCKETS)
    return dataclasses.replace(config, capacity_buckets=chosen)


def window_lengths(frames: int, window_frames: int | None, overlap_frames: int) -> list[int]:
    """The distinct window lengths the sampler calls the model with, in order of first use."""
    from mcgraph.video.sampler import plan_segments

    return list(dict.fromkeys(s.length for s in plan_segments(frames, window_frames, overlap_frames)))


def reference_example(model, length: int, context: torch.Tensor, *, batch: int = 1, latent_hw: tuple[int, int] = (16, 16),
                      seed: int = 12345) -> dict:
    """Keyword inputs of one reference-model call for a window of `length` frames (random latent and
    timesteps; `context` [B, label_length, context_dim] as the label encoder gives it)."""
    import torch

    g = torch.Generator().manual_seed(seed + length)
    cfg = model.config
    return dict(hidden_states=torch.randn(batch, cfg.in_channels, length, *latent_hw, generator=g),
                timesteps=torch.rand(batch, length, generator=g) * 1000, context=context)


def compile_model(opt, backend: str = "inductor"):
    """``torch.compile(opt, backend=backend, fullgraph=True, dynamic=False)`` (graphs compile on first use)."""
    import torch

    return torch.compile(opt, backend=backend, fullgraph=True, dynamic=False)


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (to check that a timed run compiled nothing)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


from mcgraph.export.onnx_export import quiet_export  # noqa: E402  (re-exported: one implementation)


# ------------------------------------------------------------------------------------------ ONNX Runtime
@dataclass
class ExportedFile:
    """One exported shape: the file, its latent shape, export time and size."""

    path: str
    latent_shape: tuple
    seconds: float
    bytes: int
    nodes: int
    info: object = None  # mcgraph.export.ExportInfo for cached exports


@dataclass
class OrtModel:
    """Sessions keyed by the latent input's shape, called like the model (see module docstring)."""

    sessions: dict  # latent shape (tuple) -> OrtSession (cached) or _PlainSession
    latent_input: str = "hidden_states"
    arg_names: tuple = ("hidden_states", "timesteps", "context")
    files: list = field(default_factory=list)  # ExportedFile per shape
    session_seconds: float = 0.0  # creating the sessions
    cache: object = None  # the CacheSession all cached sessions share (None: uncached files)

    def _session(self, args, kwargs):
        import torch

        bound = dict(zip(self.arg_names, args))
        bound.update(kwargs)
        latent = bound.get(self.latent_input)
        shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else None
        session = self.sessions.get(shape)
        if session is None:
            from mcgraph.errors import McGraphError

            known = ", ".join(str(list(k)) for k in self.sessions)
            raise McGraphError(f"no ONNX model was exported for {self.latent_input} of shape "
                               f"{list(shape) if shape else shape}; exported: {known}")
        return session

    def __call__(self, *args, **kwargs):
        return self._session(args, kwargs)(*args, **kwargs)

    def cache_context(self, name: str):
        return self.cache.cache_context(name) if self.cache is not None else contextlib.nullcontext(self)

    def reset_cache(self) -> None:
        if self.cache is not None:
            self.cache.reset_cache()

    def record_decisions(self, on: bool = True) -> list:
        return self.cache.record_decisions(on) if self.cache is not None else []

    @property
    def decision_records(self) -> list:
        return self.cache.decision_records if self.cache is not None else []

    @property
    def export_seconds(self) -> float:
        return sum(f.seconds for f in self.files)


class _PlainSession:
    """An uncached ONNX model (plain torch.onnx.export) called like the original: tensors in, tensor(s) out."""

    def __init__(self, path: str, arg_names: Sequence[str], threads: int | None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.arg_names = list(arg_names)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *args, **kwargs):
        import torch

        bound = dict(zip(self.arg_names, args))
        bound.update(kwargs)
        tensors = [v for v in (bound[n] for n in self.arg_names if n in bound) if isinstance(v, torch.Tensor)]
        if len(tensors) != len(self.input_names):
            raise TypeError(f"the ONNX model takes {len(self.input_names)} tensor inputs ({self.input_names}), "
                            f"got {len(tensors)}")
        feeds = {n: t.detach().cpu().numpy() for n, t in zip(self.input_names, tensors)}
        outs = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        return outs[0] if len(outs) == 1 else tuple(outs)


def export_cached(opt, examples: dict, out_dir: str | Path, *, stem: str = "cached", threads: int | None = 1,
                  log: Callable[[str], None] = lambda s: None) -> OrtModel:
    """Export `opt` (a caching `mcgraph.optimize` result) once per example (window length -> call kwargs)
    into `out_dir` and open each with `mcgraph.export.OrtSession`."""
    from mcgraph.export import OrtSession, export_onnx

    files, sessions = [], {}
    session_seconds = 0.0
    out_dir = Path(out_dir)
    latent_input = opt.structure.grid.latent_input
    cache = None  # one CacheSession for every exported shape: one state per context, one record list
    for length, kwargs in examples.items():
        path = out_dir / f"{stem}_{length}f.onnx"
        with quiet_export():
            info = export_onnx(opt, path, example_kwargs=kwargs)
            start = time.perf_counter()
            sess = OrtSession(path, threads=threads, cache=cache)
            cache = sess.cache_session
            session_seconds += time.perf_counter() - start
        shape = tuple(kwargs[latent_input].shape)
        sessions[shape] = sess
        files.append(ExportedFile(str(path), shape, info.seconds, info.bytes, info.nodes, info))
        log(f"exported {info.summary()}")
    first = next(iter(sessions.values()))
    return OrtModel(sessions, latent_input=latent_input, arg_names=tuple(first.meta["arg_names"]), files=files,
                    session_seconds=session_seconds, cache=cache)


def export_uncached(model, examples: dict, out_dir: str | Path, *, stem: str = "uncached",
                    latent_input: str = "hidden_states", threads: int | None = 1,
                    log: Callable[[str], None] = lambda s: None) -> OrtModel:
    """The uncached ONNX baseline: ``torch.onnx.export(model, (), kwargs=kwargs, dynamo=True)`` per example."""
    import inspect

    import onnx
    import torch

    arg_names = tuple(inspect.signature(model.forward).parameters)
    files, sessions = [], {}
    session_seconds = 0.0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for length, kwargs in examples.items():
        path = out_dir / f"{stem}_{length}f.onnx"
        start = time.perf_counter()
        with quiet_export(), torch.no_grad():
            program = torch.onnx.export(model, (), kwargs=kwargs, dynamo=True, verbose=False)
            program.save(str(path))
        seconds = time.perf_counter() - start
        nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
        start = time.perf_counter()
        with quiet_export():
            sessions[tuple(kwargs[latent_input].shape)] = _PlainSession(path, arg_names, threads)
        session_seconds += time.perf_counter() - start
        files.append(ExportedFile(str(path), tuple(kwargs[latent_input].shape), seconds, path.stat().st_size, nodes))
        log(f"exported {path} (uncached): {path.stat().st_size / 2**20:.1f} MiB, {nodes} nodes, {seconds:.1f} s")
    return OrtModel(sessions, latent_input=latent_input, arg_names=arg_names, files=files,
                    session_seconds=session_seconds)
