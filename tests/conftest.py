"""Shared test settings: one torch thread (the machine has 2 cores and other jobs), patient hypothesis."""

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

settings.register_profile(
    "mcgraph", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("mcgraph")


@pytest.fixture
def tiny_dit_config():
    """A reference-architecture config small enough for sub-second tests."""
    from mcgraph.zoo.causal_dit import CausalDiTConfig

    return CausalDiTConfig(
        in_channels=4, out_channels=4, dim=24, num_heads=2, num_layers=2, ffn_dim=32, context_dim=8,
        freq_dim=16, causal_block_size=2,
    )


TINY_WEIGHTS_STEP = 123


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """Random weights with the reference model's interface (12 latent channels, label encoder) but tiny, for
    CLI / demo / bench runs that take seconds; two blocks, the fewest the block-stack analysis accepts."""
    from mcgraph.zoo.causal_dit import CausalDiTConfig
    from mcgraph.zoo.scenes import LABEL_LENGTH, LABEL_VOCAB_SIZE
    from mcgraph.zoo.weights import build_reference, save_reference

    cfg = CausalDiTConfig(dim=24, num_heads=2, num_layers=2, ffn_dim=32, context_dim=16, freq_dim=16,
                          label_vocab_size=LABEL_VOCAB_SIZE, label_length=LABEL_LENGTH)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_reference(path, *build_reference(cfg), info={"step": TINY_WEIGHTS_STEP})
    return path


@pytest.fixture
def fresh_dynamo():
    """Tests that compile start and end with dynamo's caches and counters empty (compile counts are asserted)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
