"""One session behind every runtime: the same bad input gets the same answer from eager, torch.compile of an
optimised module, the "mcgraph" backend and ONNX Runtime, and never reaches the cache state.

The subject is a tiny reference-architecture DiT (seconds to export). For each runtime: a good call warms the
state, a bad call (NaN or Inf in the latent, the timesteps or the conditioning) is refused with an error naming
the input, and the next good call returns exactly what a twin runtime that never saw the bad call returns.
"""

from __future__ import annotations

import threading

import pytest
import torch

import mcgraph
import mcgraph.export
from mcgraph.config import MotionCacheConfig
from mcgraph.runtime.session import ConcurrentContextError, NonFiniteInputError
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
    """(callable like the model, reset, cache context manager) for one runtime, with fresh state."""
    import torch._dynamo

    if kind == "onnx":
        session = mcgraph.export.OrtSession(onnx_file, threads=1)
        return session, session.reset_cache, session.cache_context
    if kind == "backend":
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="mcgraph", dynamic=True, fullgraph=True,
                                 options={"config": CONFIG, "backend": "aot_eager"})
        return compiled, mcgraph.reset_cache, mcgraph.cache_context
    opt = mcgraph.optimize(model, CONFIG, example_kwargs=_calls()[0])
    if kind == "compile":
        torch._dynamo.reset()
        compiled = torch.compile(opt, backend="aot_eager", fullgraph=True, dynamic=False)
        return compiled, opt.reset_cache, opt.cache_context
    return opt, opt.reset_cache, opt.cache_context


@pytest.mark.parametrize("kind", RUNTIMES)
def test_bad_input_is_refused_alike_and_never_reaches_the_state(kind, model, onnx_file):
    first, second = _calls()
    run, reset, _ = _runtime(kind, model, onnx_file)
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


# ------------------------------------------------------------------------------------------ two threads
def _request(seed: int, steps: int = 3) -> list[dict]:
    """One request's calls: its own latent and conditioning, a falling timestep."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 6, 12, 10, generator=g)
    ctx = torch.randn(1, 5, 8, generator=g)
    return [dict(hidden_states=x * (1 - 0.1 * i), timesteps=torch.full((1, 6), 900.0 - 100 * i), context=ctx)
            for i in range(steps)]


def _serve_concurrently(run, context_of, requests: dict[str, list[dict]]) -> dict[str, list[torch.Tensor]]:
    """Each request in its own thread and cache context, in lock step: a barrier before every call, so each
    call runs while the other thread is inside a different context."""
    barrier = threading.Barrier(len(requests))
    outputs: dict[str, list] = {name: [] for name in requests}
    errors: list[BaseException] = []

    def serve(name: str) -> None:
        try:
            with context_of(name), torch.no_grad():
                for call in requests[name]:
                    barrier.wait(timeout=120)
                    outputs[name].append(run(**call))
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=serve, args=(name,)) for name in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return outputs


@pytest.mark.parametrize("kind", [k for k in RUNTIMES if k != "compile"])
def test_two_threads_in_two_contexts_get_what_each_gets_alone(kind, model, onnx_file):
    run, reset, context_of = _runtime(kind, model, onnx_file)
    requests = {"a": _request(1), "b": _request(2)}
    reset()
    alone = {}
    for name, calls in requests.items():
        with context_of(name), torch.no_grad():
            alone[name] = [run(**c) for c in calls]
    reset()
    together = _serve_concurrently(run, context_of, requests)
    for name in requests:
        for step, (got, want) in enumerate(zip(together[name], alone[name])):
            assert torch.equal(got, want), f"{kind}: request {name!r}, call {step} differs from the request alone"


def test_compiled_optimised_module_refuses_two_threads_in_different_contexts(model, onnx_file):
    """torch.compile of an optimised module reads the context as an attribute (dynamo cannot read context
    variables): two threads in different contexts would share it, so the second context is refused."""
    run, reset, context_of = _runtime("compile", model, onnx_file)
    first, second = _calls()
    with torch.no_grad():
        want = run(**first)
    with pytest.raises(ConcurrentContextError, match="backend='mcgraph'"):
        _serve_concurrently(run, context_of, {"a": _request(1), "b": _request(2)})
    with torch.no_grad():  # the refusal touched no state: the default context carries on
        torch.testing.assert_close(run(**first), want, atol=1e-6, rtol=0)
