"""Prune a Flax model in your own training loop: about ten added lines, marked ``# +emrakul``.

Trains a small MLP on MNIST-1D (generated in-process, nothing downloaded) with Adam while
gradual magnitude pruning (GMP) cuts its hidden kernels to 90% sparsity, keeping the head
dense, then prints the test accuracy and the sparsity::

    python -m experiments.own_loop
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import emrakul  # +emrakul
from emrakul.lab.hosts.mnist1d import load_mnist1d, sample_batch


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(256)(x))
        x = nn.relu(nn.Dense(256)(x))
        return nn.Dense(10, name="head")(x)


def main(steps: int = 1500, sparsity: float = 0.9, seed: int = 0) -> dict[str, float]:
    """Trains, prunes and evaluates; returns the test accuracy and the final sparsity."""
    data = load_mnist1d(seed)
    model = MLP()
    params = jax.jit(model.init)(jax.random.PRNGKey(seed), data.train.x[:1])["params"]
    tx = emrakul.wrap(  # +emrakul: wrap any optax optimizer
        optax.adam(1e-3),  # +emrakul
        emrakul.controllers.make("gmp"),  # +emrakul: or "rigl", "set", "gsnr", ...
        total_steps=steps,  # +emrakul
        sparsity=sparsity,  # +emrakul
        every=50,  # +emrakul: surgery interval (host steps)
        filter=emrakul.filters.regex(r"kernel", exclude=r"head"),  # +emrakul: keep head dense
    )  # +emrakul
    opt_state = jax.jit(tx.init)(params)

    def loss_fn(p, opt_state, x, y):
        logits = model.apply({"params": emrakul.masked(p, opt_state)}, x)  # +emrakul
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(params, opt_state, train, key):
        x, y = sample_batch(key, train, 128)
        grads = jax.grad(loss_fn)(params, opt_state, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for key in jax.random.split(jax.random.PRNGKey(seed + 1), steps):
        params, opt_state = train_step(params, opt_state, data.train, key)

    logits = model.apply({"params": emrakul.masked(params, opt_state)}, data.test.x)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == data.test.y))
    pruned = float(emrakul.sparsity(opt_state))  # +emrakul
    print(f"test accuracy {accuracy:.3f}, sparsity of the hidden kernels {pruned:.3f}")
    return {"test_accuracy": accuracy, "sparsity": pruned}


if __name__ == "__main__":
    main()
