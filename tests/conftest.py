"""Shared test settings: float32 everywhere, small and deterministic."""

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
