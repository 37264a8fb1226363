"""Shared test settings: float32 everywhere, small and deterministic.

The tests' programs are tiny and compiled once each, so XLA's LLVM optimisation level 0 is set
here (before any test initialises a backend; child processes inherit it): compilation dominates
their time (figures in BUILD_NOTES.md, "Tests and CI").
"""

import os

import numpy as np
import pytest

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
).strip()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
