"""The Scalpel: jit-compiled mask kernels.

Exact k-of-n selection without sorting, N:M masks, Gumbel-top-k subsets, Gumbel-softmax gates,
hard-concrete L0 gates, sparsity structures with one ``select`` entry point, and mask pytrees.
"""

from emrakul.masks.hard_concrete import (
    hard_concrete,
    hard_concrete_deterministic,
    hard_concrete_l0,
    hard_concrete_prob_nonzero,
)
from emrakul.masks.nm import is_nm, nm_mask
from emrakul.masks.select import check_sparsity, keep_count, select, unit_scores
from emrakul.masks.stochastic import gumbel_softmax_mask, gumbel_topk, soft_topk
from emrakul.masks.structures import NM, Structure, Units, Unstructured
from emrakul.masks.topk import topk_mask
from emrakul.masks.tree import apply, init, is_pruned, map_pruned, sparsity

__all__ = [
    "NM",
    "Structure",
    "Units",
    "Unstructured",
    "apply",
    "check_sparsity",
    "gumbel_softmax_mask",
    "gumbel_topk",
    "hard_concrete",
    "hard_concrete_deterministic",
    "hard_concrete_l0",
    "hard_concrete_prob_nonzero",
    "init",
    "is_nm",
    "is_pruned",
    "keep_count",
    "map_pruned",
    "nm_mask",
    "select",
    "soft_topk",
    "sparsity",
    "topk_mask",
    "unit_scores",
]
