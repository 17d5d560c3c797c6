"""One seed for a training run: the demo models come out the same each time on the same machine."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch and ask for deterministic kernels: on one machine a run repeats bit for bit."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn, not fail, on an op without such a kernel
    # That switch also fills every new tensor's memory with NaN, a debugging aid that costs a pass over memory
    # per allocation and changes no result (what is computed overwrites it): off.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
