"""Rectified-flow conventions shared by training and sampling.

x_sigma = (1 - sigma) * x0 + sigma * noise, sigma in [0, 1] (1 = pure noise); the model predicts the
velocity v = noise - x0 at timestep t = 1000 * sigma, so x0 = x_sigma - sigma * v.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 / Wan timestep shift: spends more steps at high noise when shift > 1."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sigma_schedule(steps: int, shift: float) -> torch.Tensor:
    """steps + 1 noise levels from 1 (noise) down to 0 (clean), float64 for exact bookkeeping."""
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return (1 - sigma) * x0 + sigma * noise


def predicted_clean(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return x_t - sigma * velocity


def final_timestep(steps: int, shift: float) -> float:
    """The timestep a frame has at its last denoising step under `sigma_schedule(steps, shift)`: what a cache's
    `final_timestep` should be set to so that every token's final step is computed, never reused."""
    return float(sigma_schedule(steps, shift)[-2]) * NUM_TRAIN_TIMESTEPS
