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
