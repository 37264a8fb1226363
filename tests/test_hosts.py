"""Tests for emrakul.lab.hosts: MNIST-1D data, sampling, Conv1D, classifier hosts and metrics."""

import random

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from emrakul.lab import hosts
from emrakul.lab.hosts import mnist1d as mnist1d_lib


@pytest.fixture(scope="module")
def data() -> hosts.Dataset:
    return hosts.load_mnist1d(seed=0)


# --- data ---------------------------------------------------------------------------------------


def test_dataset_shapes_and_dtypes(data):
    sizes = {"train": 3600, "val": 400, "test": 1000}
    for name, split in data._asdict().items():
        assert split.x.shape == (sizes[name], 40)
        assert split.y.shape == (sizes[name],)
        assert split.x.dtype == jnp.float32
        assert split.y.dtype == jnp.int32
        y = np.asarray(split.y)
        assert y.min() >= 0 and y.max() < 10
        assert len(np.unique(y)) == 10
        assert np.isfinite(np.asarray(split.x)).all()
    x = np.asarray(data.train.x)
    np.testing.assert_allclose(x.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(), 1.0, atol=1e-5)


def test_splits_are_disjoint(data):
    rows = {name: {r.tobytes() for r in np.asarray(s.x)} for name, s in data._asdict().items()}
    assert len(rows["train"]) == 3600  # no duplicates either
    assert not rows["train"] & rows["val"]
    assert not rows["train"] & rows["test"]
    assert not rows["val"] & rows["test"]


def test_deterministic_per_seed_and_cached():
    a = hosts.load_mnist1d(seed=3, num_samples=500, val_fraction=0.2)
    assert hosts.load_mnist1d(seed=3, num_samples=500, val_fraction=0.2) is a  # cached
    fresh = mnist1d_lib._load.__wrapped__(3, 500, 0.2)  # regenerate, bypassing the cache
    for s, t in zip(a, fresh, strict=True):
        np.testing.assert_array_equal(s.x, t.x)
        np.testing.assert_array_equal(s.y, t.y)
    assert (a.train.x.shape[0], a.val.x.shape[0], a.test.x.shape[0]) == (320, 80, 100)
    other = hosts.load_mnist1d(seed=4, num_samples=500, val_fraction=0.2)
    assert not np.array_equal(a.train.x, other.train.x)


def test_loading_keeps_global_random_state():
    np.random.seed(123)
    random.seed(123)
    expected = (np.random.rand(), random.random())
    np.random.seed(123)
    random.seed(123)
    mnist1d_lib._load.__wrapped__(7, 100, 0.1)
    assert (np.random.rand(), random.random()) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": -1},
        {"seed": 1.5},
        {"num_samples": 0},
        {"num_samples": 1234},
        {"num_samples": 40},
        {"val_fraction": 1.0},
        {"val_fraction": -0.1},
        {"val_fraction": "0.1"},
        {"num_samples": 50, "val_fraction": 0.001},
    ],
)
def test_load_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        hosts.load_mnist1d(**kwargs)


def test_sample_batch_jit_and_vmap(data):
    split = data.val
    draw = jax.jit(hosts.sample_batch, static_argnums=2)
    x, y = draw(jax.random.key(0), split, 64)
    assert x.shape == (64, 40) and y.shape == (64,)
    assert x.dtype == jnp.float32 and y.dtype == jnp.int32
    x2, _ = draw(jax.random.key(0), split, 64)
    np.testing.assert_array_equal(x, x2)
    # Every drawn (x, y) pair is an example of the split.
    lookup = {
        r.tobytes(): int(label) for r, label in zip(np.asarray(split.x), split.y, strict=True)
    }
    assert all(lookup[r.tobytes()] == int(t) for r, t in zip(np.asarray(x), y, strict=True))

    keys = jax.random.split(jax.random.key(1), 5)
    xs, ys = jax.jit(jax.vmap(lambda k: hosts.sample_batch(k, split, 16)))(keys)
    assert xs.shape == (5, 16, 40) and ys.shape == (5, 16)
    assert not np.array_equal(xs[0], xs[1])


@pytest.mark.parametrize("batch_size", [0, -3, 2.0, True])
def test_sample_batch_rejects_bad_batch_size(data, batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        hosts.sample_batch(jax.random.key(0), data.val, batch_size)


# --- Conv1D and hosts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel_size", "cin", "cout", "batch"),
    [
        (1, 4, 8, 5),
        (2, 1, 3, 1),
        (3, 1, 3, 5),
        (3, 4, 8, 1),
        (4, 4, 8, 5),
        (5, 1, 3, 5),
        (5, 4, 8, 1),
        (7, 4, 8, 5),
    ],
)
def test_conv1d_equals_flax_conv(kernel_size, cin, cout, batch):
    key_x, key_p, key_b = jax.random.split(jax.random.key(kernel_size * 100 + cin * 10 + batch), 3)
    x = jax.random.normal(key_x, (batch, 40, cin))
    ours = hosts.Conv1D(cout, kernel_size)
    ref = nn.Conv(cout, (kernel_size,), padding="SAME")
    params = ours.init(key_p, x)
    ref_shapes = jax.tree.map(jnp.shape, ref.init(key_p, x))
    assert jax.tree.map(jnp.shape, params) == ref_shapes
    params = {"params": {**params["params"], "bias": jax.random.normal(key_b, (cout,))}}
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), atol=1e-5, rtol=1e-5)

    def grads(module):
        loss = lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4),
        grads(ours),
        grads(ref),
    )


def test_max_pool2_matches_flax():
    x = jax.random.normal(jax.random.key(0), (3, 11, 4))
    ref = nn.max_pool(x, (2,), strides=(2,), padding="VALID")
    np.testing.assert_array_equal(hosts.max_pool2(x), ref)


def _check_param_tree(params):
    assert type(params) is dict and type(params["params"]) is dict  # plain dicts
    leaves = jax.tree_util.tree_leaves_with_path(params)
    for path, leaf in leaves:
        name = path[-1].key
        assert name in ("kernel", "bias")
        assert leaf.ndim >= 2 if name == "kernel" else leaf.ndim == 1
    return {jax.tree_util.keystr(p): leaf.shape for p, leaf in leaves}


def test_mlp_forward_and_params():
    model = hosts.make_host("mlp", [32, 16])
    assert isinstance(model, hosts.MLP)
    x = jnp.zeros((7, 40))
    params = model.init(jax.random.key(0), x)
    assert model.apply(params, x).shape == (7, 10)
    assert _check_param_tree(params) == {
        "['params']['Dense_0']['kernel']": (40, 32),
        "['params']['Dense_0']['bias']": (32,),
        "['params']['Dense_1']['kernel']": (32, 16),
        "['params']['Dense_1']['bias']": (16,),
        "['params']['Dense_2']['kernel']": (16, 10),
        "['params']['Dense_2']['bias']": (10,),
    }
    assert hosts.make_host("mlp", 8, depth=3).features == (8, 8, 8)
    assert hosts.make_host("mlp", np.int64(8), depth=1).features == (8,)
    assert hosts.make_host("mlp", np.array([8, 4])).features == (8, 4)


def test_cnn_forward_and_params():
    model = hosts.make_host("cnn", [4, 8], kernel_size=3, hidden=16)
    assert isinstance(model, hosts.CNN1D)
    x = jnp.zeros((5, 40))
    params = model.init(jax.random.key(0), x)
    logits = jax.jit(model.apply)(params, x)
    assert logits.shape == (5, 10)
    assert _check_param_tree(params) == {
        "['params']['Conv1D_0']['kernel']": (3, 1, 4),
        "['params']['Conv1D_0']['bias']": (4,),
        "['params']['Conv1D_1']['kernel']": (3, 4, 8),
        "['params']['Conv1D_1']['bias']": (8,),
        "['params']['Dense_0']['kernel']": (10 * 8, 16),  # 40 -> 20 -> 10 after two pools
        "['params']['Dense_0']['bias']": (16,),
        "['params']['Dense_1']['kernel']": (16, 10),
        "['params']['Dense_1']['bias']": (10,),
    }
    # Hosts vmap over a population of parameter sets.
    keys = jax.random.split(jax.random.key(1), 3)
    pop = jax.jit(jax.vmap(lambda k: model.init(k, x)))(keys)
    assert jax.jit(jax.vmap(model.apply, in_axes=(0, None)))(pop, x).shape == (3, 5, 10)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("transformer", 32), {}, "unknown host kind"),
        (("mlp", 0), {}, "depth|width"),
        (("mlp", [16, -1]), {}, "width"),
        (("mlp", []), {}, "width"),
        (("mlp", "32"), {}, "width"),
        (("mlp", 16), {"depth": 0}, "depth"),
        (("cnn", [4]), {"kernel_size": 0}, "kernel_size"),
        (("cnn", [4] * 6), {}, "pool"),
    ],
)
def test_make_host_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        hosts.make_host(*args, **kwargs)


# --- metrics and training -----------------------------------------------------------------------


def test_cross_entropy_and_accuracy():
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 1.0, 1.0]])
    y = jnp.array([0, 1, 2])
    expected = -np.mean(np.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))
    np.testing.assert_allclose(hosts.cross_entropy(logits, y), expected, rtol=1e-6)
    np.testing.assert_allclose(hosts.accuracy(logits, y), 1.0 / 3.0)
    with pytest.raises(ValueError, match="labels"):
        hosts.cross_entropy(logits, y[:2])
    with pytest.raises(ValueError, match="labels"):
        hosts.accuracy(logits[0], y)


def test_evaluate_chunks_jit_and_vmap(data):
    model = hosts.make_host("mlp", [16])
    split = data.val  # 400 examples: chunks of 128 leave a padded remainder
    params = model.init(jax.random.key(0), split.x[:1])
    logits = model.apply(params, split.x)
    full = jax.jit(lambda p: hosts.evaluate(model.apply, p, split))(params)
    chunked = jax.jit(lambda p: hosts.evaluate(model.apply, p, split, batch_size=128))(params)
    for metrics in (full, chunked):
        np.testing.assert_allclose(metrics["loss"], hosts.cross_entropy(logits, split.y), rtol=1e-5)
        np.testing.assert_allclose(metrics["accuracy"], hosts.accuracy(logits, split.y))
    init = jax.jit(jax.vmap(lambda k: model.init(k, split.x[:1])))
    pop = init(jax.random.split(jax.random.key(1), 3))
    batched = jax.jit(jax.vmap(lambda p: hosts.evaluate(model.apply, p, split, batch_size=128)))(
        pop
    )
    assert batched["loss"].shape == (3,) and batched["accuracy"].shape == (3,)
    with pytest.raises(ValueError, match="batch_size"):
        hosts.evaluate(model.apply, params, split, batch_size=0)


def test_short_mlp_training_beats_chance(data):
    """300 Adam steps of an MLP [256, 256] reach 0.60-0.62 test accuracy (8 seeds); chance 0.1."""
    model = hosts.make_host("mlp", [256, 256])
    opt = optax.adam(3e-3)

    def train(key):
        init_key, loop_key = jax.random.split(key)
        params = model.init(init_key, data.train.x[:1])

        def step(carry, k):
            params, opt_state = carry
            x, y = hosts.sample_batch(k, data.train, 128)
            loss, g = jax.value_and_grad(lambda p: hosts.cross_entropy(model.apply(p, x), y))(
                params
            )
            updates, opt_state = opt.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        init = (params, opt.init(params))
        (params, _), losses = jax.lax.scan(step, init, jax.random.split(loop_key, 300))
        return losses, hosts.evaluate(model.apply, params, data.test)

    losses, metrics = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 2))
    assert np.all(np.asarray(losses[:, -20:]).mean(1) < np.asarray(losses[:, :20]).mean(1) - 1.0)
    assert np.all(np.asarray(metrics["accuracy"]) > 0.5), metrics
