"""Slow, obviously-correct NumPy references for the mask kernels."""

import numpy as np

TINY = np.finfo(np.float32).tiny


def ref_topk(x: np.ndarray, k: int) -> np.ndarray:
    """Obviously correct: rank by (value desc, flat index asc); NaN lowest; denormals = 0."""
    flat = np.asarray(x, np.float64).ravel()
    flat = np.where(np.isnan(flat), -np.inf, flat)
    flat = np.where(np.abs(flat) < TINY, 0.0, flat)
    order = sorted(range(flat.size), key=lambda i: (-flat[i], i))
    out = np.zeros(flat.size, bool)
    out[order[:k]] = True
    return out.reshape(np.shape(x))


def ref_nm(x: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros(moved.shape, bool)
    for idx in np.ndindex(*moved.shape[:-1]):
        row = moved[idx]
        for g in range(0, row.size, m):
            block = row[g : g + m]
            order = sorted(range(m), key=lambda i: (-block[i], i))
            for i in order[:n]:
                out[(*idx, g + i)] = True
    return np.moveaxis(out, -1, axis)
