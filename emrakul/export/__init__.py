"""Real savings from a pruned network: compaction and sparse export.

Training with Emrakul keeps every weight in a dense array and multiplies by a mask, so a pruned
model is as large and as slow as the dense one until it is exported. This package turns masks
into savings, after training, on the host (numpy; the output shapes depend on the mask values, so
nothing here is jitted). One module per idea:

* :mod:`~emrakul.export.resolve`: masks in any accepted form -> effective params and a bool mask
  tree (:func:`resolve_masks`).
* :mod:`~emrakul.export.stack` and :mod:`~emrakul.export.compaction`: :func:`compact` physically
  removes dead output units / channels of a plain sequential stack of ``Dense`` and ``Conv``
  layers (``hosts.MLP``, ``hosts.CNN1D``) together with the matching input rows of the layer
  that consumes them, and :func:`compact_model` builds the smaller Flax module (structured
  pruning pays off on any hardware: the matmuls themselves shrink; Li et al. 2017, "Pruning
  Filters for Efficient ConvNets").
* :mod:`~emrakul.export.depgraph` and :mod:`~emrakul.export.lysis`: the same for any JAX model
  (Linen, NNX, Equinox, plain functions): :func:`dependency_graph` reads from the jaxpr which
  parameter slices are coupled (biases, norms, residual streams, flattened maps, attention
  heads), and :func:`lyse` removes the dead units of every group from the params, any optimizer
  state and the masks together, returning a compact apply function that replays the traced
  program on the smaller arrays (Fang et al. 2023, "DepGraph: Towards Any Structural Pruning").
  :func:`group_pruning` makes each group one region of ``emrakul.wrap`` (a leader kernel pruned
  with ``Units``, the group's other producing slices tied to it) and :func:`lyse_training`
  removes lysed units while the model trains (:func:`lyse_seeds`: for seeds vmapped in one
  program, each seed's units permuted to one common width); :func:`save_lysed` /
  :func:`load_lysed` store a compact model with orbax and load it back runnable.
* :mod:`~emrakul.export.sparse`: :func:`to_sparse` / :func:`from_sparse` store masked kernels
  sparsely: unstructured kernels as values plus relative (delta) indices or a bitmap, N:M
  kernels as compressed values plus packed in-group indices (Han et al. 2015, "Learning both
  weights and connections for efficient neural networks", and its follow-up "Deep Compression",
  Han et al. 2016, for the relative indices; Mishra et al. 2021, "Accelerating Sparse Deep
  Neural Networks", for the 2:4 values + 2-bit metadata layout).
* :mod:`~emrakul.export.checkpoint`: :func:`save` / :func:`load` write and read that encoding as
  an orbax checkpoint; :func:`checkpoint_bytes` measures one on disk.

Masks may be given as a mask tree (:mod:`emrakul.masks`: bool per pruned leaf, scalar ``True``
for unpruned leaves), as a lifecycle state tree (``int8``, ``ALIVE`` = kept; sedated and lysed
weights are dropped), as a :class:`~emrakul.surgery.lifecycle.Lifecycle`, or as the wrapper's
optimizer state (an :class:`~emrakul.wrapper.EmrakulState`, possibly inside a chain), in which
case the exported weights are ``emrakul.masked(params, state)`` (gates included).
"""

from emrakul.export.checkpoint import checkpoint_bytes, load, save
from emrakul.export.compaction import Compacted, compact, compact_model
from emrakul.export.depgraph import DependencyGraph, Group, Member, dependency_graph
from emrakul.export.group_pruning import GroupPruning, group_pruning
from emrakul.export.lysis import Lineage, Lysis, compact_apply, compose, cut, cut_state, lyse
from emrakul.export.lysis_checkpoint import load_lysed, save_lysed
from emrakul.export.lysis_seeds import lyse_seeds
from emrakul.export.lysis_training import TrainingLysis, lyse_training
from emrakul.export.resolve import resolve_masks
from emrakul.export.sparse import SparseLeaf, from_sparse, to_sparse

__all__ = [
    "Compacted",
    "DependencyGraph",
    "Group",
    "GroupPruning",
    "Lineage",
    "Lysis",
    "Member",
    "SparseLeaf",
    "TrainingLysis",
    "checkpoint_bytes",
    "compact",
    "compact_apply",
    "compact_model",
    "compose",
    "cut",
    "cut_state",
    "dependency_graph",
    "from_sparse",
    "group_pruning",
    "load",
    "load_lysed",
    "lyse",
    "lyse_seeds",
    "lyse_training",
    "resolve_masks",
    "save",
    "save_lysed",
    "to_sparse",
]
