"""MNIST-1D, generated in-process, and jit-friendly minibatch sampling.

MNIST-1D (Greydanus 2020, "Scaling down deep learning", arXiv:2011.14439) is a procedurally
generated 10-class benchmark of 40-long 1-D signals: each digit template is padded, dilated,
scaled, translated, corrupted with correlated and i.i.d. noise, sheared and subsampled. It is
small enough that a whole population of host networks trains on one CPU in seconds, yet (unlike
MNIST) it separates MLPs from CNNs and dense from sparse networks, which is what a pruning
benchmark needs.

The data are produced by the ``mnist1d`` package (``make_dataset``), so nothing is downloaded.
Splits are held as JAX arrays, and :func:`sample_batch` draws a minibatch with ``jax.random``,
so a training loop inside ``lax.scan`` can keep the arrays in its closure or state.
"""

from __future__ import annotations

import functools
import random
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NUM_CLASSES = 10
SIGNAL_LENGTH = 40


class Split(NamedTuple):
    """One split of a dataset.

    Attributes:
      x: float32 signals, shape ``[N, 40]``.
      y: int32 labels in ``[0, 10)``, shape ``[N]``.
    """

    x: jax.Array
    y: jax.Array


class Dataset(NamedTuple):
    """Train, validation and test splits (disjoint)."""

    train: Split
    val: Split
    test: Split


def _generate(seed: int, num_samples: int) -> dict[str, np.ndarray]:
    """Runs ``mnist1d.data.make_dataset`` without leaking its global seeding."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    # make_dataset seeds Python's and NumPy's global generators; restore them afterwards so that
    # loading data has no side effect on the caller's randomness.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        return make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _extra_seed(seed: int) -> int:
    """The generator seed of the extra validation/test examples of dataset ``seed``."""
    return (seed + 1_000_003) % 2**32


def _extra(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` further i.i.d. examples (inputs, labels) from the generator at another seed."""
    if count == 0:
        return np.zeros((0, SIGNAL_LENGTH)), np.zeros((0,), np.int64)
    total = -(-count // 4) * 5  # make_dataset keeps 80% + 20%; both parts are i.i.d. draws
    total = -(-total // NUM_CLASSES) * NUM_CLASSES
    data = _generate(_extra_seed(seed), max(total, 50))
    x = np.concatenate([data["x"], data["x_test"]])[:count]
    y = np.concatenate([data["y"], data["y_test"]])[:count]
    return np.asarray(x, np.float64), np.asarray(y, np.int64)


@functools.lru_cache(maxsize=16)
def _load(
    seed: int, num_samples: int, val_fraction: float, extra_val: int = 0, extra_test: int = 0
) -> Dataset:
    data = _generate(seed, num_samples)
    x_all = np.asarray(data["x"], np.float64)
    y_all = np.asarray(data["y"], np.int64)
    num_val = round(len(y_all) * val_fraction)
    num_train = len(y_all) - num_val
    if num_train < 1 or (val_fraction > 0 and num_val < 1):
        raise ValueError(
            f"num_samples={num_samples} with val_fraction={val_fraction} leaves an empty split "
            f"({num_train} train, {num_val} val); use more samples"
        )
    # make_dataset has already shuffled the examples, so a contiguous cut is a random split.
    x_train, x_val = x_all[:num_train], x_all[num_train:]
    y_train, y_val = y_all[:num_train], y_all[num_train:]
    mean, std = x_train.mean(), x_train.std()
    x_more, y_more = _extra(seed, extra_val + extra_test)
    x_val = np.concatenate([x_val, x_more[:extra_val]])
    y_val = np.concatenate([y_val, y_more[:extra_val]])
    x_test = np.concatenate([np.asarray(data["x_test"], np.float64), x_more[extra_val:]])
    y_test = np.concatenate([np.asarray(data["y_test"], np.int64), y_more[extra_val:]])

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        x = ((x - mean) / std).astype(np.float32)
        return Split(x=jnp.asarray(x), y=jnp.asarray(y, jnp.int32))

    return Dataset(
        train=split(x_train, y_train),
        val=split(x_val, y_val),
        test=split(x_test, y_test),
    )


def load_mnist1d(
    seed: int = 0,
    num_samples: int = 5000,
    val_fraction: float = 0.1,
    extra_val: int = 0,
    extra_test: int = 0,
) -> Dataset:
    """Generates MNIST-1D (Greydanus 2020) in-process and splits it into train/val/test.

    ``make_dataset`` keeps the first 80% of the (shuffled) examples for training and the last 20%
    as the test set; the last ``val_fraction`` of the training part becomes the validation set.
    With the defaults that is 3600 train, 400 val and 1000 test examples, 40 features each.

    Signals are standardised with one scalar mean and standard deviation computed over the train
    split (all positions pooled, so the signal's shape along its length is preserved and a CNN's
    translation equivariance is not broken). ``make_dataset`` already standardises the whole set,
    so this changes little, but no statistic of val/test leaks into the inputs.

    ``extra_val`` and ``extra_test`` append further examples to the validation and test splits
    without touching the training split: they are drawn by the same generator at a derived seed
    (i.i.d. with the rest), so a run can be scored on a large validation or test set while it
    trains on exactly the examples it would train on otherwise.

    Results are cached in-process on the arguments (generation takes about a second); the arrays
    are immutable JAX arrays, so sharing them is safe. The global Python/NumPy random states that
    ``make_dataset`` reseeds are restored.

    Args:
      seed: seed of the generator; the same seed gives the same dataset.
      num_samples: total number of examples, a positive multiple of 10 (equal class counts).
      val_fraction: fraction of the training part held out for validation, in ``[0, 1)``.
      extra_val: further examples appended to the validation split (``>= 0``).
      extra_test: further examples appended to the test split (``>= 0``).

    Returns:
      A :class:`Dataset` of float32 ``[N, 40]`` inputs and int32 ``[N]`` labels.

    Raises:
      ValueError: if an argument is out of range or a split would be empty.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer):
        raise ValueError(f"num_samples must be an int, got {num_samples!r}")
    if num_samples < 50 or num_samples % NUM_CLASSES:
        raise ValueError(
            f"num_samples must be a multiple of {NUM_CLASSES} and at least 50, got {num_samples}"
        )
    if not isinstance(val_fraction, int | float) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    for name, value in (("extra_val", extra_val), ("extra_test", extra_test)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return _load(int(seed), int(num_samples), float(val_fraction), int(extra_val), int(extra_test))


def sample_batch(key: jax.Array, split: Split, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Draws a random minibatch uniformly *with replacement* from a split.

    Sampling with replacement needs no epoch bookkeeping and no permutation state, so it is a
    pure function of the key: it can be called inside ``lax.scan``/``jit``/``vmap`` with the
    split's arrays closed over or carried in the state. Over many steps every example is seen at
    the same rate as with shuffled epochs, in expectation.

    Args:
      key: a PRNG key.
      split: the :class:`Split` to draw from.
      batch_size: number of examples (static Python int).

    Returns:
      ``(x, y)`` with shapes ``[batch_size, 40]`` and ``[batch_size]``.

    Raises:
      ValueError: if ``batch_size`` is not a positive int or the split is empty.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"batch_size must be a static int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = split.x.shape[0]
    if n < 1 or split.y.shape[0] != n:
        raise ValueError(
            f"split must hold N >= 1 aligned examples, got {split.x.shape=}, {split.y.shape=}"
        )
    idx = jax.random.randint(key, (int(batch_size),), 0, n)
    return split.x[idx], split.y[idx]
