"""One session behind every runtime: the same bad input gets the same answer from eager, torch.compile of an
optimised module, the "mcgraph" backend and ONNX Runtime, and never reaches the cache state.

The subject is a tiny reference-architecture DiT (seconds to export). For each runtime: a good call warms the
state, a bad call (NaN or Inf in the latent, the timesteps or the conditioning) is refused with an error naming
the input, and the next good call returns exactly what a twin runtime that never saw the bad call returns.
"""

from __future__ import annotations

import pytest
import torch

import mcgraph
import mcgraph.export
from mcgraph.config import MotionCacheConfig
from mcgraph.runtime.session import NonFiniteInputError
from mcgraph.zoo.causal_dit import CausalVideoDiT

CONFIG = MotionCacheConfig(threshold=0.05, warmup_steps=1, phase1_computes=0, capacity_buckets=(0.5, 1.0),
                           chunk_frames=2)
RUNTIMES = ("eager", "compile", "backend", "onnx")
BAD = [("hidden_states", float("nan")), ("timesteps", float("nan")), ("context", float("inf")),
       ("hidden_states", float("-inf"))]


def _calls():
    g = torch.Generator().manual_seed(0)
    # no two sizes equal: dynamo's dynamic capture gives equal sizes one symbol (duck sizing)
    x = torch.randn(1, 4, 6, 12, 10, generator=g)
    ctx = torch.randn(1, 5, 8, generator=g)
    first = dict(hidden_states=x, timesteps=torch.full((1, 6), 900.0), context=ctx)
    second = dict(hidden_states=x * 0.9, timesteps=torch.full((1, 6), 800.0), context=ctx)
    return first, second


@pytest.fixture(scope="module")
def model(request):
    from mcgraph.zoo.causal_dit import CausalDiTConfig

    torch.manual_seed(0)
    cfg = CausalDiTConfig(in_channels=4, out_channels=4, dim=24, num_heads=2, num_layers=2, ffn_dim=32,
                          context_dim=8, freq_dim=16, causal_block_size=2)
    return CausalVideoDiT(cfg).eval()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    opt = mcgraph.optimize(model, CONFIG, example_kwargs=_calls()[0])
    path = tmp_path_factory.mktemp("contract") / "tiny.onnx"
    mcgraph.export.onnx(opt, path, example_kwargs=_calls()[0])
    return path


def _runtime(kind: str, model, onnx_file):
    """(callable like the model, context manager factory, reset) for one runtime, with fresh state."""
    import torch._dynamo

    if kind == "onnx":
        session = mcgraph.export.OrtSession(onnx_file, threads=1)
        return session, session.reset_cache
    if kind == "backend":
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="mcgraph", dynamic=True, fullgraph=True,
                                 options={"config": CONFIG, "backend": "aot_eager"})
        return compiled, mcgraph.reset_cache
    opt = mcgraph.optimize(model, CONFIG, example_kwargs=_calls()[0])
    if kind == "compile":
        torch._dynamo.reset()
        return torch.compile(opt, backend="aot_eager", fullgraph=True, dynamic=False), opt.reset_cache
    return opt, opt.reset_cache


@pytest.mark.parametrize("kind", RUNTIMES)
def test_bad_input_is_refused_alike_and_never_reaches_the_state(kind, model, onnx_file):
    first, second = _calls()
    run, reset = _runtime(kind, model, onnx_file)
    reset()
    with torch.no_grad():
        run(**first)
        want = run(**second)  # what a good call after a good call gives
    for name, value in BAD:
        reset()  # the state must survive the bad call; reset only between cases
        with torch.no_grad():
            run(**first)
            bad = {k: v.clone() for k, v in second.items()}
            bad[name].view(-1)[3] = value
            # the session raises NonFiniteInputError; a compiled optimised module asserts in its graph (RuntimeError)
            with pytest.raises((NonFiniteInputError, RuntimeError),
                               match=rf"input '{name}' contains NaN or Inf; the call was refused before the cache"):
                run(**bad)
            got = run(**second)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        assert torch.isfinite(got).all()
