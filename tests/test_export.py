"""Compaction (physically removing dead units) and sparse export (orbax checkpoints)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import emrakul
from emrakul import export
from emrakul import masks as msk
from emrakul.lab import hosts
from emrakul.masks import nm_mask
from emrakul.masks.structures import Units
from emrakul.surgery.lifecycle import ALIVE, LYSED, SEDATED


def _init(module, in_shape, rng, bias_scale=0.3):
    """Params with non-zero random biases (so dead units emit relu(bias) != 0)."""
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, *in_shape)))["params"]
    return jax.tree.map(
        lambda p: p + bias_scale * jnp.asarray(rng.normal(size=p.shape), p.dtype), params
    )


def _unit_masks(params, rng, dead_frac, last, extra=0.2, all_but_one=None):
    """Random unit masks: whole output columns dead, plus unstructured holes elsewhere."""
    out = {}
    for name, layer in params.items():
        shape = layer["kernel"].shape
        alive = rng.random(shape[-1]) >= (0.0 if name == last else dead_frac)
        if name == all_but_one:
            alive = np.zeros(shape[-1], bool)
            alive[rng.integers(shape[-1])] = True
        kernel = np.broadcast_to(alive, shape) & (rng.random(shape) >= extra)
        out[name] = {"kernel": kernel, "bias": np.bool_(True)}
    return out


def _max_diff(a, b):
    return float(jnp.max(jnp.abs(a - b)))


# ------------------------------------------------------------------------------- compaction


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compact_mlp_matches_masked(seed):
    rng = np.random.default_rng(seed)
    model = hosts.MLP(features=(48, 32, 24), num_classes=10)
    params = _init(model, (20,), rng)
    masks = _unit_masks(params, rng, 0.5, "Dense_3", all_but_one="Dense_1")
    c = export.compact(params, masks)
    assert c.widths[1] == 1  # all-but-one dead
    dead0 = int(np.sum(~masks["Dense_0"]["kernel"].any(0)))
    assert c.widths[0] <= 48 - dead0
    assert c.params["Dense_3"]["kernel"].shape[-1] == 10  # the output layer keeps its units
    assert set(c.kept) == {"Dense_0", "Dense_1", "Dense_2", "Dense_3"}
    x = jnp.asarray(rng.normal(size=(64, 20)), jnp.float32)
    want = model.apply({"params": msk.apply(params, masks)}, x)
    small = export.compact_model(model, c)
    assert small.features == c.widths
    got = small.apply({"params": c.params}, x)
    assert _max_diff(want, got) < 1e-4
    # the compact masks have the compact shapes and keep the sparsity pattern
    for name in c.params:
        assert c.masks[name]["kernel"].shape == c.params[name]["kernel"].shape
        assert np.all(np.asarray(c.params[name]["kernel"])[~c.masks[name]["kernel"]] == 0)


def test_compact_folds_dead_unit_bias():
    """A dead unit with bias > 0 still emits relu(bias): dropping it must move that into b_next."""
    model = hosts.MLP(features=(4,), num_classes=3)
    w0 = jnp.arange(8.0).reshape(2, 4) / 8
    params = {
        "Dense_0": {"kernel": w0, "bias": jnp.array([0.5, -1.0, 2.0, 0.0])},
        "Dense_1": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
    }
    masks = msk.init(params)
    dead = np.array([True, True, False, False])
    masks["Dense_0"]["kernel"] = jnp.broadcast_to(~dead, (2, 4))
    c = export.compact(params, masks)
    assert c.widths == (2,)
    np.testing.assert_array_equal(c.kept["Dense_0"], [2, 3])
    np.testing.assert_allclose(c.params["Dense_1"]["bias"], [0.5, 0.5, 0.5])  # relu(0.5)+relu(-1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 2)), jnp.float32)
    want = model.apply({"params": msk.apply(params, masks)}, x)
    got = export.compact_model(model, c).apply({"params": c.params}, x)
    assert _max_diff(want, got) < 1e-5


def test_compact_whole_layer_dead_keeps_a_placeholder():
    rng = np.random.default_rng(3)
    model = hosts.MLP(features=(16, 8), num_classes=5)
    params = _init(model, (6,), rng)
    masks = _unit_masks(params, rng, 0.0, "Dense_2")
    masks["Dense_1"]["kernel"] = np.zeros((16, 8), bool)
    c = export.compact(params, masks)
    assert c.widths[1] == 1
    x = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
    want = model.apply({"params": msk.apply(params, masks)}, x)
    got = export.compact_model(model, c).apply({"params": c.params}, x)
    assert _max_diff(want, got) < 1e-5


@pytest.mark.parametrize("seed", [0, 1])
def test_compact_cnn1d_matches_masked(seed):
    rng = np.random.default_rng(seed)
    model = hosts.CNN1D(channels=(8, 12), kernel_size=5, hidden=16)
    params = _init(model, (40,), rng)
    masks = _unit_masks(params, rng, 0.5, "Dense_1")
    c = export.compact(params, masks)
    assert len(c.widths) == 3 and c.widths[1] < 12 and c.widths[2] < 16
    # conv -> conv: a dead channel with relu(bias) > 0 cannot be folded, it stays
    conv0_dead = ~masks["Conv1D_0"]["kernel"].reshape(-1, 8).any(0)
    stuck = conv0_dead & (np.asarray(params["Conv1D_0"]["bias"]) > 0)
    unused = ~masks["Conv1D_1"]["kernel"].any(axis=(0, 2))
    assert c.retained_dead["Conv1D_0"] == int(np.sum(stuck & ~unused))
    x = jnp.asarray(rng.normal(size=(32, 40)), jnp.float32)
    want = model.apply({"params": msk.apply(params, masks)}, x)
    got = export.compact_model(model, c).apply({"params": c.params}, x)
    assert _max_diff(want, got) < 1e-4


def test_compact_accepts_lifecycle_states_and_wrapped_params():
    rng = np.random.default_rng(4)
    model = hosts.MLP(features=(12, 10), num_classes=4)
    params = _init(model, (5,), rng)
    bool_masks = _unit_masks(params, rng, 0.5, "Dense_2")
    states = jax.tree.map(
        lambda m: (
            np.where(m, ALIVE, rng.choice([SEDATED, LYSED], size=m.shape)).astype(np.int8)
            if np.ndim(m)
            else np.int8(ALIVE)
        ),
        bool_masks,
    )
    a = export.compact(params, bool_masks)
    b = export.compact({"params": params}, {"params": states})
    assert a.widths == b.widths
    for name in a.params:
        np.testing.assert_array_equal(a.params[name]["kernel"], b.params["params"][name]["kernel"])


def test_compact_masks_from_wrap_units():
    rng = np.random.default_rng(5)
    model = hosts.MLP(features=(64, 64), num_classes=10)
    params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 40)))["params"]
    x = jnp.asarray(rng.normal(size=(256, 40)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=256))
    steps = 40
    tx = emrakul.wrap(
        optax.adam(1e-3),
        emrakul.controllers.make("gmp"),
        total_steps=steps,
        structure=Units(-1),
        sparsity=0.5,
        every=5,
    )
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, i):
        xb, yb = jax.lax.dynamic_slice_in_dim(x, i * 32 % 224, 32), y[:32]

        def loss_fn(p):
            logits = model.apply({"params": emrakul.masked(p, opt_state)}, xb)
            return hosts.cross_entropy(logits, yb)

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for i in range(steps):
        params, opt_state = step(params, opt_state, i)
    assert float(emrakul.sparsity(opt_state)) > 0.4
    c = export.compact(params, opt_state)
    assert c.widths[0] <= 40 and c.widths[1] <= 40
    want = model.apply({"params": emrakul.masked(params, opt_state)}, x)
    got = export.compact_model(model, c).apply({"params": c.params}, x)
    assert _max_diff(want, got) < 1e-4
    # the same through the lifecycle-state tree
    c2 = export.compact(params, opt_state.life.state)
    assert c2.widths == c.widths


def test_compact_rejects_unsupported_graphs():
    k = lambda *s: jnp.ones(s)
    with pytest.raises(ValueError, match="non-sequential"):
        export.compact({"Dense_0": {"kernel": k(3, 4)}, "Dense_2": {"kernel": k(4, 2)}}, None)
    with pytest.raises(ValueError, match="unknown leaf"):
        export.compact({"Dense_0": {"kernel": k(3, 4), "scale": k(4)}}, None)
    with pytest.raises(ValueError, match="not a Dense_i"):
        export.compact({"Dense_0": {"kernel": k(3, 4)}, "BatchNorm_0": {"scale": k(4)}}, None)
    params = {"Dense_0": {"kernel": k(3, 4)}, "Dense_1": {"kernel": k(5, 2)}}
    with pytest.raises(ValueError, match="shape mismatch"):
        export.compact(params, msk.init(params))
    params = {"Conv1D_0": {"kernel": k(3, 1, 4)}, "Dense_0": {"kernel": k(10, 2)}}
    with pytest.raises(ValueError, match="not a multiple"):
        export.compact(params, msk.init(params))
    params = {"Dense_0": {"kernel": k(3, 4), "bias": k(3)}}
    with pytest.raises(ValueError, match="bias"):
        export.compact(params, msk.init(params))
    with pytest.raises(ValueError, match="compact_model"):
        export.compact_model(
            object(),
            export.compact(*(lambda p: (p, msk.init(p)))({"Dense_0": {"kernel": k(3, 4)}})),
        )


# --------------------------------------------------------------------------- sparse storage


def _tree(rng):
    return {
        "a": {"kernel": jnp.asarray(rng.normal(size=(300, 200)), jnp.float32)},
        "b": {
            "kernel": jnp.asarray(rng.normal(size=(5, 8, 16)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(16,)), jnp.float32),
        },
    }


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99, 0.999, 1.0])
def test_sparse_round_trip_exact(sparsity):
    rng = np.random.default_rng(int(sparsity * 1000))
    params = _tree(rng)
    masks = jax.tree.map(lambda p: rng.random(p.shape) >= sparsity, params)
    masks["b"]["bias"] = True
    sparse = export.to_sparse(params, masks, nm_sizes=())
    got, got_masks = export.from_sparse(sparse)
    want = msk.apply(params, jax.tree.map(jnp.asarray, masks))
    for g, w, gm, m in zip(
        jax.tree.leaves(got),
        jax.tree.leaves(want),
        jax.tree.leaves(got_masks),
        jax.tree.leaves(masks),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
        np.testing.assert_array_equal(gm, m)
    fmt = sparse["a"]["kernel"].format
    assert fmt == ("delta" if sparsity >= 0.9 else "bitmap")
    assert sparse["b"]["bias"].format == "dense"
    if sparsity == 0.999:
        assert sparse["a"]["kernel"].arrays["long_gaps"].size > 0  # gaps >= 256 escaped


@pytest.mark.parametrize(("n", "m", "axis"), [(2, 4, 0), (2, 4, -1), (1, 4, 0), (4, 8, -1)])
def test_nm_round_trip(n, m, axis):
    rng = np.random.default_rng(7)
    params = _tree(rng)
    masks = {
        "a": {"kernel": nm_mask(jnp.abs(params["a"]["kernel"]), n, m, axis=axis)},
        "b": {"kernel": nm_mask(jnp.abs(params["b"]["kernel"]), n, m, axis=-2), "bias": True},
    }
    sparse = export.to_sparse(params, masks)
    leaf = sparse["a"]["kernel"]
    assert (leaf.format, leaf.n, leaf.m) == ("nm", n, m)
    assert leaf.arrays["values"].shape[-1] == n
    assert leaf.arrays["index"].dtype == np.uint8
    assert sparse["b"]["kernel"].format == "nm" and sparse["b"]["kernel"].axis == 1
    got, got_masks = export.from_sparse(sparse)
    want = msk.apply(params, masks)
    np.testing.assert_array_equal(got["a"]["kernel"], want["a"]["kernel"])
    np.testing.assert_array_equal(got["b"]["kernel"], want["b"]["kernel"])
    np.testing.assert_array_equal(got_masks["a"]["kernel"], masks["a"]["kernel"])


def test_sparse_bad_inputs():
    rng = np.random.default_rng(8)
    params = _tree(rng)
    good = jax.tree.map(lambda p: np.ones(p.shape, bool), params)
    bad_shape = jax.tree.map(lambda m: m, good)
    bad_shape["a"]["kernel"] = np.ones((200, 300), bool)
    with pytest.raises(ValueError, match="shape"):
        export.to_sparse(params, bad_shape)
    with pytest.raises(ValueError, match="bool"):
        export.to_sparse(params, jax.tree.map(lambda m: m.astype(np.float32), good))
    with pytest.raises(ValueError, match="bool"):
        export.to_sparse(params, jax.tree.map(lambda m: m.astype(np.int32), good))
    with pytest.raises(ValueError, match="lifecycle"):
        export.to_sparse(params, jax.tree.map(lambda m: np.full(m.shape, 7, np.int8), good))
    with pytest.raises(ValueError, match="structure"):
        export.to_sparse(params, {"a": good["a"]})
    scalar_false = jax.tree.map(lambda m: m, good)
    scalar_false["b"]["bias"] = False
    with pytest.raises(ValueError, match="marker"):
        export.to_sparse(params, scalar_false)
    with pytest.raises(ValueError, match="SparseLeaf"):
        export.from_sparse({"a": np.ones(3)})


def test_save_load_outputs_match_masked_model(tmp_path):
    rng = np.random.default_rng(9)
    model = hosts.MLP(features=(64, 32), num_classes=10)
    params = _init(model, (40,), rng)
    masks = jax.tree.map(lambda p: rng.random(p.shape) >= 0.9 if p.ndim == 2 else True, params)
    masks["Dense_2"]["kernel"] = np.zeros((32, 10), bool)  # an empty leaf saves and loads
    export.save(tmp_path / "ckpt", params, masks)
    with pytest.raises(ValueError, match="overwrite"):
        export.save(tmp_path / "ckpt", params, masks)
    export.save(tmp_path / "ckpt", params, masks, overwrite=True)
    got, got_masks = export.load(tmp_path / "ckpt")
    x = jnp.asarray(rng.normal(size=(32, 40)), jnp.float32)
    want = model.apply({"params": msk.apply(params, masks)}, x)
    assert _max_diff(want, model.apply({"params": got}, x)) == 0.0
    np.testing.assert_array_equal(got_masks["Dense_0"]["kernel"], masks["Dense_0"]["kernel"])


def test_save_load_non_dict_tree_needs_target(tmp_path):
    rng = np.random.default_rng(10)
    params = [jnp.asarray(rng.normal(size=(8, 12)), jnp.float32), jnp.ones(3)]
    masks = [rng.random((8, 12)) > 0.5, True]
    export.save(tmp_path / "c", params, masks)
    with pytest.raises(ValueError, match="target"):
        export.load(tmp_path / "c")
    got, _ = export.load(tmp_path / "c", target=params)
    np.testing.assert_array_equal(got[0], np.where(masks[0], params[0], 0))
    np.testing.assert_array_equal(got[1], params[1])
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "plain", {"x": np.ones(3)})
    checkpointer.wait_until_finished()
    with pytest.raises(ValueError, match="not a checkpoint"):
        export.load(tmp_path / "plain")
    with pytest.raises(FileNotFoundError):
        export.load(tmp_path / "missing")


def test_checkpoint_sizes_784_512_512_10(tmp_path):
    rng = np.random.default_rng(11)
    shapes = [(784, 512), (512, 512), (512, 10)]
    params = {
        f"Dense_{i}": {
            "kernel": rng.normal(size=s).astype(np.float32),
            "bias": rng.normal(size=s[1]).astype(np.float32),
        }
        for i, s in enumerate(shapes)
    }
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "dense", params)
    checkpointer.wait_until_finished()
    dense = export.checkpoint_bytes(tmp_path / "dense")
    unstructured = {
        k: {"kernel": rng.random(v["kernel"].shape) >= 0.95, "bias": True}
        for k, v in params.items()
    }
    size95 = export.save(tmp_path / "u95", params, unstructured)
    nm = {
        k: {"kernel": nm_mask(jnp.abs(v["kernel"]), 2, 4, axis=0), "bias": True}
        for k, v in params.items()
    }
    size24 = export.save(tmp_path / "nm", params, nm)
    assert size95 <= 0.12 * dense, (size95, dense)
    assert size24 <= 0.56 * dense, (size24, dense)
    got, _ = export.load(tmp_path / "nm")
    for k in params:
        np.testing.assert_array_equal(
            got[k]["kernel"], np.where(nm[k]["kernel"], params[k]["kernel"], 0)
        )


def test_save_from_wrapper_state(tmp_path):
    rng = np.random.default_rng(12)
    model = hosts.MLP(features=(16,), num_classes=4)
    params = _init(model, (8,), rng)
    tx = emrakul.wrap(
        optax.sgd(0.1), emrakul.controllers.make("one_shot"), total_steps=10, sparsity=0.8
    )
    opt_state = tx.init(params)
    grads = jax.tree.map(jnp.zeros_like, params)
    _, opt_state = tx.update(grads, opt_state, params)
    export.save(tmp_path / "w", params, opt_state)
    got, _ = export.load(tmp_path / "w")
    x = jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)
    want = model.apply({"params": emrakul.masked(params, opt_state)}, x)
    assert _max_diff(want, model.apply({"params": got}, x)) == 0.0


# ------------------------------------------------------------------------ the package's modules


def test_public_names_are_the_modules_own():
    from emrakul.export import checkpoint, compaction, resolve, sparse

    assert export.compact is compaction.compact and export.Compacted is compaction.Compacted
    assert export.compact_model is compaction.compact_model
    assert export.resolve_masks is resolve.resolve_masks
    assert export.to_sparse is sparse.to_sparse and export.from_sparse is sparse.from_sparse
    assert export.SparseLeaf is sparse.SparseLeaf
    assert export.save is checkpoint.save and export.load is checkpoint.load
    assert export.checkpoint_bytes is checkpoint.checkpoint_bytes
    assert all(hasattr(export, name) for name in export.__all__)


def test_layer_names_put_convs_first_and_reject_mixed_kinds():
    from emrakul.export import stack

    k = lambda *s: jnp.ones(s)
    params = {"Dense_0": {"kernel": k(8, 2)}, "Conv_1": {"kernel": k(3, 3, 4, 4)}}
    params["Conv_0"] = {"kernel": k(3, 3, 1, 4)}
    assert stack.layer_names(params) == ["Conv_0", "Conv_1", "Dense_0"]
    with pytest.raises(ValueError, match="mixed conv"):
        stack.layer_names({"Conv_0": {"kernel": k(3, 1, 4)}, "Conv1D_0": {"kernel": k(3, 4, 4)}})
    with pytest.raises(ValueError, match="non-empty dict"):
        stack.layer_names({})
    with pytest.raises(ValueError, match="no 'kernel'"):
        stack.layer_names({"Dense_0": {"bias": k(3)}})
    with pytest.raises(ValueError, match="not a floating array"):
        stack.layer_names({"Dense_0": {"kernel": jnp.ones((3, 4), jnp.int32)}})
    with pytest.raises(ValueError, match=r"\[in, out\]"):
        stack.layer_names({"Dense_0": {"kernel": k(3, 4, 5)}})
    with pytest.raises(ValueError, match="conv layer 'Conv1D_0' after a dense"):
        stack.consumer_view("Dense_0", "Conv1D_0", np.ones((3, 4, 2)), 4)


def test_compact_activation_by_name_or_function():
    rng = np.random.default_rng(13)
    model = hosts.MLP(features=(12,), num_classes=3)
    params = _init(model, (5,), rng)
    masks = _unit_masks(params, rng, 0.5, "Dense_1")
    by_name = export.compact(params, masks, activation="relu")
    by_fn = export.compact(params, masks, activation=jax.nn.relu)
    assert by_name.widths == by_fn.widths
    np.testing.assert_array_equal(
        by_name.params["Dense_1"]["bias"], by_fn.params["Dense_1"]["bias"]
    )
    with pytest.raises(ValueError, match="unknown activation"):
        export.compact(params, masks, activation="gelu")


def test_resolve_masks_needs_exactly_one_wrapper_state():
    params = {"Dense_0": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}}
    tx = emrakul.wrap(
        optax.sgd(0.1), emrakul.controllers.make("one_shot"), total_steps=2, sparsity=0.5
    )
    state = tx.init(params)
    eff, masks = export.resolve_masks(params, (optax.EmptyState(), state))
    assert masks["Dense_0"]["kernel"].dtype == bool
    assert masks["Dense_0"]["kernel"].shape == (4, 4)
    assert eff["Dense_0"]["kernel"].shape == (4, 4)
    with pytest.raises(ValueError, match="found 2 Emrakul states"):
        export.resolve_masks(params, (state, state))


def test_pack_unpack_round_trip_every_width():
    from emrakul.export import sparse

    rng = np.random.default_rng(14)
    for bits in (1, 2, 4, 8):
        idx = rng.integers(0, 1 << bits, size=37).astype(np.uint8)
        packed = sparse._pack(idx, bits)
        assert packed.dtype == np.uint8 and packed.size == -(-37 * bits // 8)
        np.testing.assert_array_equal(sparse._unpack(packed, bits, 37), idx)
    leaf = export.to_sparse({"a": jnp.ones((8, 8))}, {"a": np.eye(8, dtype=bool)})["a"]
    assert leaf.nbytes == sum(a.nbytes for a in leaf.arrays.values())


def test_load_rejects_a_target_of_another_structure(tmp_path):
    params = {"a": jnp.ones((4, 3)), "b": jnp.ones(2)}
    export.save(tmp_path / "c", params, {"a": np.ones((4, 3), bool), "b": True})
    with pytest.raises(ValueError, match="do not match"):
        export.load(tmp_path / "c", target={"a": jnp.ones((4, 3))})
    got, masks = export.load(tmp_path / "c", target=params)
    np.testing.assert_array_equal(got["a"], params["a"])
    assert masks["b"] == np.bool_(True)
