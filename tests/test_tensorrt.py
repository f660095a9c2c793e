"""The ONNX -> TensorRT route: runs only where a CUDA GPU and the tensorrt package are present.

It builds an engine from the exported reference step and checks two calls against ONNX Runtime on the same
inputs and state (the second call takes the reuse path, so the state really flows through the engine)."""

from __future__ import annotations

import pytest
import torch

from mcgraph.export import tensorrt as trt_route

OK, WHY = trt_route.available()
pytestmark = pytest.mark.skipif(not OK, reason=f"TensorRT route needs a CUDA GPU and tensorrt: {WHY}")


def test_engine_matches_onnx_runtime(tmp_path):
    import mcgraph.export
    from mcgraph.config import MotionCacheConfig

    from .cached import cached
    from .generations import reference_call_kwargs

    subject, opt = cached("reference-untrained", MotionCacheConfig(threshold=0.15, capacity_buckets=(0.5, 1.0)))
    kwargs = reference_call_kwargs(subject.model)
    info = mcgraph.export.onnx(opt, tmp_path / "ref.onnx", example_kwargs=kwargs)
    engine = trt_route.build_engine(info.path, tmp_path / "ref.plan")
    session = mcgraph.export.OrtSession(info.path)
    state = session.initial_state()
    names = [s["name"] for s in session.meta["state"]]
    for _ in range(2):  # first call computes everything, the identical second one reuses
        feeds = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        ort_feeds = {**{k: v.numpy() for k, v in feeds.items()}, **{f"state_{n}": s for n, s in zip(names, state)}}
        ort_out = dict(zip(session.output_names, session.ort.run(None, ort_feeds)))
        trt_out = trt_route.run_engine(engine, {k: torch.from_numpy(v).cuda() for k, v in ort_feeds.items()})
        assert torch.allclose(trt_out["output_0"].cpu(), torch.from_numpy(ort_out["output_0"]), atol=1e-3)
        assert int(trt_out["mcgraph_executed"]) == int(ort_out["mcgraph_executed"])
        state = [ort_out[f"new_state_{n}"] for n in names]
    assert int(ort_out["mcgraph_executed"]) == 0
