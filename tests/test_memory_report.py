"""The cache memory a context holds, known up front: the layout the budget and the report read is exactly the
state the step keeps (every tensor, shape and dtype, after every kind of call), and the report says it."""

from __future__ import annotations

import warnings

import pytest
import torch

import mcgraph
from mcgraph.config import FlowCacheConfig, MotionCacheConfig, NoCache, TeaCacheConfig
from mcgraph.runtime.memory import CacheMemoryWarning, format_bytes, state_layout
from mcgraph.zoo.subjects import SUBJECTS, PlainDiT

from .cached import cached

POLICIES = {
    "motioncache": MotionCacheConfig(threshold=0.2, warmup_steps=1, phase1_computes=0),
    "motioncache-residual": MotionCacheConfig(threshold=0.2, warmup_steps=1, phase1_computes=0,
                                              motion_source="residual"),  # keeps an extra [B, L] tensor
    "flowcache": FlowCacheConfig(threshold=0.2, warmup_steps=1),
    "teacache": TeaCacheConfig(threshold=0.2, warmup_steps=1),
}


def _held(opt) -> dict:
    """name -> (shape, dtype) of the default context's state as the session holds it."""
    _, state = opt.cache_session.states["default"]
    out = {k: (tuple(v.shape), v.dtype) for k, v in state.items() if k != "kv"}
    out.update({f"kv.{i}": (tuple(t.shape), t.dtype) for i, t in enumerate(state["kv"])})
    return out


def _drift(kwargs: dict, latent: str, step: int) -> dict:
    """Call `step` of a made-up run: half the frames drift, so calls take the full, subset and skip paths."""
    x = kwargs[latent].clone()
    half = x.shape[2] // 2
    g = torch.Generator().manual_seed(step)
    x[:, :, half:] += 0.5 * step * torch.randn(x[:, :, half:].shape, generator=g)
    return dict(kwargs, **{latent: x})


@pytest.mark.parametrize("subject_name", ["plain-dit", "skyreels-tiny"])
@pytest.mark.parametrize("policy", list(POLICIES))
def test_layout_is_exactly_the_state_held_after_every_call(subject_name, policy):
    subject, opt = cached(subject_name, POLICIES[policy])
    opt.reset_cache()
    records = opt.record_decisions()
    for step in range(4):
        call = _drift(subject.kwargs, subject.latent_input, step)
        spec, _, flat = opt.specialisation_for(**call)
        want = {t.name: (t.shape, t.dtype) for t in state_layout(spec.step, flat)}
        estimate = opt.cache_bytes_per_context(**call)
        with torch.no_grad():
            opt(**call)
        assert _held(opt) == want, f"call {step} ({records[-1].path})"
        assert opt.cache_state_bytes() == estimate
    opt.record_decisions(False)
    assert {r.path for r in records} >= {"full", "subset"} or policy == "teacache"


def test_a_model_that_casts_its_inputs_is_estimated_in_its_own_dtype():
    """bfloat16 weights called with float32 latents: the state is bfloat16 (the estimate used to read the
    latent's dtype and came out twice too large)."""
    subject = SUBJECTS["wan-tiny"]()
    inner = subject.model.to(torch.bfloat16)

    class Cast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, hidden_states, timestep, encoder_hidden_states):
            out = self.inner(hidden_states.to(torch.bfloat16), timestep, encoder_hidden_states.to(torch.bfloat16),
                             return_dict=False)[0]
            return out.float()

    kwargs = {k: v for k, v in subject.kwargs.items() if k != "return_dict"}
    opt = mcgraph.optimize(Cast(), MotionCacheConfig(), (), kwargs)
    estimate = opt.cache_bytes_per_context()
    with torch.no_grad():
        opt(**kwargs)
    assert _held(opt)["residual"][1] == torch.bfloat16
    assert opt.cache_state_bytes() == estimate


def test_report_numbers_add_up():
    subject, opt = cached("plain-dit", POLICIES["motioncache"])
    report = opt.cache_memory_report()
    # plain-dit: batch 2, 4 x 4 x 5 = 80 tokens, width 64, 3 layers: per token indicator 256 + residual 256 +
    # K/V 3 x 2 x 64 x 4 = 1536 + acc/computes/weights/timesteps 16 = 2064 B; watched label y: 2 x int64
    assert (report.batch, report.frames, report.tokens) == (2, 4, 80)
    assert report.bytes_per_token == 2064
    assert report.per_token_groups() == {"K/V": 1536, "residual": 256, "indicator": 256, "accumulators": 16}
    assert report.fixed_bytes == 16
    assert report.bytes_per_context == 2064 * 160 + 16 == opt.cache_bytes_per_context()
    assert report.weight_bytes == sum(p.numel() * 4 for p in subject.model.parameters())
    assert report.weight_ratio == pytest.approx(report.bytes_per_context / report.weight_bytes)
    assert report.bytes_for(tokens=800, contexts=2) == 2 * (2064 * 2 * 800 + 16)
    text = str(report)
    for part in ("PlainDiT under MotionCacheConfig", "batch 2 x 80 tokens (4 frames x 20)",
                 f"{format_bytes(report.bytes_per_context)} per context", "x the weights",
                 f"two: {format_bytes(2 * report.bytes_per_context)}", "per token and sample: 2.02 KiB",
                 "K/V 1.50 KiB (3 attention layers)", "each frame (20 tokens) adds 80.62 KiB",
                 "watched-input copies (y)", "max_cache_bytes not set"):
        assert part in text, (part, text)
    assert report.to_dict()["bytes_per_context"] == report.bytes_per_context


def test_no_report_without_caching():
    subject = SUBJECTS["plain-dit"]()
    opt = mcgraph.optimize(subject.model, NoCache(), (), subject.kwargs)
    assert opt.cache_memory_report() is None and opt.cache_bytes_per_context() == 0


def _long_video_dit():
    """Small weights, many tokens: one context holds about 3x the weights."""
    torch.manual_seed(0)
    model = PlainDiT(dim=16, heads=2, depth=3, max_tokens=640).eval()
    return model, {"x": torch.randn(1, 3, 8, 32, 40), "t": torch.rand(1) * 1000, "y": torch.tensor([1])}


def test_optimize_warns_when_one_context_dwarfs_the_weights():
    model, kwargs = _long_video_dit()
    with pytest.warns(CacheMemoryWarning, match=r"holds 330.01 KiB for the example call \(1 x 640 tokens\), "
                                                r"3\.1x the weights \(107.94 KiB\); .* max_cache_bytes is not set"):
        opt = mcgraph.optimize(model, MotionCacheConfig(), (), kwargs)
    assert opt.cache_memory_report().weight_ratio > 2
    with pytest.warns(CacheMemoryWarning, match="max_cache_bytes is 1000000"):
        mcgraph.optimize(model, MotionCacheConfig(max_cache_bytes=10**6), (), kwargs)


def test_no_warning_when_the_state_is_small():
    subject = SUBJECTS["plain-dit"]()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheMemoryWarning)
        opt = mcgraph.optimize(subject.model, MotionCacheConfig(), (), subject.kwargs)
    assert opt.cache_memory_report().weight_ratio < 0.5
