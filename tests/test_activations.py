"""Tests for emrakul.vitals.activation_stats against NumPy forward passes."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul import vitals


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(8)(x))
        x = nn.relu(nn.Dense(6)(x))
        return nn.Dense(3)(x)


class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.relu(nn.Conv(5, (3, 3), strides=2)(x))
        return nn.Dense(2)(x.mean(axis=(1, 2)))


def ref_stats(h, tau):
    """ReDo statistics of a [..., units] activation, in float64."""
    h = np.abs(np.asarray(h, np.float64)).reshape(-1, h.shape[-1])
    mean_abs = h.mean(axis=0)
    layer = mean_abs.mean()
    score = mean_abs / layer if layer > 0 else np.zeros_like(mean_abs)
    return mean_abs, score, score <= tau


def assert_stats(stats, h, tau):
    mean_abs, score, dormant = ref_stats(h, tau)
    np.testing.assert_allclose(stats.mean_abs, mean_abs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.dormant_score, score, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stats.dormant, dormant)


def relu(x):
    return np.maximum(x, 0)


def mlp_setup():
    x = np.asarray(jax.random.normal(jax.random.key(0), (16, 5)))
    variables = MLP().init(jax.random.key(1), x)
    p = jax.tree_util.tree_map(np.array, variables["params"])  # writable copies
    p["Dense_0"]["bias"][[1, 4]] = -100.0  # two dead units in the first layer
    return x, {"params": p}


def mlp_reference(x, p):
    h0 = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    h1 = relu(h0) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    h2 = relu(h1) @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
    return {"Dense_0": h0, "Dense_1": h1, "Dense_2": h2}


@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_mlp_matches_numpy(tau):
    x, variables = mlp_setup()
    out = vitals.activation_stats(MLP(), variables, x, tau=tau)
    ref = mlp_reference(x, variables["params"])
    assert list(out) == ["Dense_0", "Dense_1", "Dense_2"]  # the output layer is included
    for name, h in ref.items():
        assert_stats(out[name], relu(h), tau)
    assert out["Dense_0"].dormant[1] and out["Dense_0"].dormant[4]
    assert out["Dense_0"].mean_abs.shape == (8,) and out["Dense_2"].dormant.shape == (3,)


def test_identity_and_custom_activation():
    x, variables = mlp_setup()
    ref = mlp_reference(x, variables["params"])
    out = vitals.activation_stats(MLP(), variables, x, activation=None, tau=0.3)
    for name, h in ref.items():
        assert_stats(out[name], h, 0.3)
    out = vitals.activation_stats(MLP(), variables, x, activation=jnp.tanh)
    assert_stats(out["Dense_1"], np.tanh(ref["Dense_1"]), 0.0)


def np_conv_same(x, kernel, bias, stride):
    """A direct NumPy 'SAME' convolution, NHWC / HWIO, odd kernel sizes."""
    n, hgt, wid, _ = x.shape
    kh, kw, _, cout = kernel.shape
    out_h, out_w = -(-hgt // stride), -(-wid // stride)
    pad_h = max((out_h - 1) * stride + kh - hgt, 0)
    pad_w = max((out_w - 1) * stride + kw - wid, 0)
    xp = np.pad(
        x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    )
    y = np.zeros((n, out_h, out_w, cout))
    for i in range(out_h):
        for j in range(out_w):
            patch = xp[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            y[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, kernel)
    return y + bias


def test_conv_net_matches_numpy():
    x = np.asarray(jax.random.normal(jax.random.key(2), (3, 7, 7, 2)))
    variables = ConvNet().init(jax.random.key(3), x)
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables["params"])
    out = vitals.activation_stats(ConvNet(), variables, x, tau=0.2)
    h0 = np_conv_same(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"], 1)
    h1 = np_conv_same(relu(h0), p["Conv_1"]["kernel"], p["Conv_1"]["bias"], 2)
    h2 = relu(h1).mean(axis=(1, 2)) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    assert list(out) == ["Conv_0", "Conv_1", "Dense_0"]
    assert h1.shape == (3, 4, 4, 5)
    for name, h in {"Conv_0": h0, "Conv_1": h1, "Dense_0": h2}.items():
        assert_stats(out[name], relu(h), 0.2)


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(4)(x))
        self.sow("intermediates", "act", h)
        return h


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        shared = nn.Dense(4, name="shared")
        x = Block()(x)
        x = shared(shared(x))  # called twice: pooled
        x = nn.LayerNorm()(x)  # not captured
        self.sow("intermediates", "out", x)
        return x


def test_nested_sown_and_shared_layers():
    x = np.asarray(jax.random.normal(jax.random.key(4), (6, 3)))
    variables = Net().init(jax.random.key(5), x)
    variables = {**variables, "intermediates": {"junk": (jnp.ones(3),)}}  # ignored
    out = vitals.activation_stats(Net(), variables, x, activation=None)
    assert set(out) == {"Block_0/Dense_0", "Block_0/act", "shared", "out"}
    p = jax.tree_util.tree_map(np.asarray, variables["params"])
    pre = x @ p["Block_0"]["Dense_0"]["kernel"] + p["Block_0"]["Dense_0"]["bias"]
    assert_stats(out["Block_0/Dense_0"], pre, 0.0)
    assert_stats(out["Block_0/act"], np.tanh(pre), 0.0)  # sown: no activation applied
    s1 = np.tanh(pre) @ p["shared"]["kernel"] + p["shared"]["bias"]
    s2 = s1 @ p["shared"]["kernel"] + p["shared"]["bias"]
    assert_stats(out["shared"], np.concatenate([s1, s2]), 0.0)
    # Only sown values: no layer types captured.
    only_sown = vitals.activation_stats(Net(), variables, x, layer_types=())
    assert set(only_sown) == {"Block_0/act", "out"}


def test_jit_traced_tau_and_vmap_over_params():
    x, variables = mlp_setup()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def stats(v, tau):
        return vitals.activation_stats(MLP(), v, x, tau=tau)

    ref = mlp_reference(x, variables["params"])
    for tau in (0.0, 0.4, 0.9):
        out = stats(variables, jnp.float32(tau))
        assert_stats(out["Dense_1"], relu(ref["Dense_1"]), tau)

    other = jax.tree_util.tree_map(lambda a: 0.5 * a, variables)
    batch = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), variables, other)
    out = jax.vmap(lambda v: vitals.activation_stats(MLP(), v, x, tau=0.3))(batch)
    ref_other = mlp_reference(x, other["params"])
    for name in ref:
        assert_stats(jax.tree_util.tree_map(lambda a: a[1], out[name]), relu(ref_other[name]), 0.3)


def test_gradient_of_mean_abs():
    x, variables = mlp_setup()

    def f(kernel):
        v = {
            "params": {
                **variables["params"],
                "Dense_1": {**variables["params"]["Dense_1"], "kernel": kernel},
            }
        }
        out = vitals.activation_stats(MLP(), v, x, activation=jnp.tanh)
        return jnp.sum(out["Dense_1"].mean_abs)

    k = jnp.asarray(variables["params"]["Dense_1"]["kernel"])
    g = jax.jit(jax.grad(f))(k)
    # NumPy: d/dK mean_n |tanh(a_n K + b)| summed over units = a^T (sign(t) (1 - t^2)) / N.
    p = variables["params"]
    a = relu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]).astype(np.float64)
    t = np.tanh(a @ np.asarray(k, np.float64) + p["Dense_1"]["bias"])
    np.testing.assert_allclose(g, a.T @ (np.sign(t) * (1 - t**2)) / len(x), rtol=1e-4, atol=1e-6)


def test_rejects_capture_intermediates_kwarg():
    x, variables = mlp_setup()
    with pytest.raises(ValueError, match=r"capture_intermediates"):
        vitals.activation_stats(MLP(), variables, x, capture_intermediates=True)
