"""The optax wrapper: prune any model trained with any optax optimizer.

``emrakul.wrap(inner_tx, controller, ...)`` returns an ``optax.GradientTransformationExtraArgs``
whose state carries the lifecycle (masks), the vital signs, the controller's state, the
per-layer budgets and the anesthesia multipliers. The forward pass uses
``emrakul.masked(params, opt_state)``::

    tx = emrakul.wrap(optax.adam(1e-3), emrakul.controllers.rigl(), total_steps=10_000,
                      sparsity=0.9)
    opt_state = tx.init(params)
    def loss_fn(p):
        return loss(model.apply({"params": emrakul.masked(p, opt_state)}, x), y)
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

``masked`` is straight-through: the gradient with respect to ``params`` is the gradient with
respect to the effective (masked, gated) weights, dense over every weight. Sedated weights learn
from it ("virtual" gradients); lysed weights are frozen (their updates and optimizer moments are
zeroed); RigL-style regrowth reads it for inactive weights at no extra cost.

Surgery happens inside ``update`` every ``every`` steps (``step % every == 0``, so also at the
first call). A caller that drives the schedule itself - the compiled loop in
:mod:`emrakul.lab.loop`, which puts surgery between scans so that nothing is decided by a
``lax.cond`` on a batched step - passes ``surgery=True`` or ``surgery=False``.

The package is one idea per module over one frozen :class:`WrapSettings`:

* :mod:`~emrakul.wrapper.settings` - the static settings, validated when built;
* :mod:`~emrakul.wrapper.checks` - the checks ``init`` runs on the parameters (named by path);
* :mod:`~emrakul.wrapper.initialize` - ``init``; :mod:`~emrakul.wrapper.update` - ``update``;
* :mod:`~emrakul.wrapper.surgery_step` - the surgery and its three modes;
* :mod:`~emrakul.wrapper.routing` - gradient routing and update finishing;
* :mod:`~emrakul.wrapper.health` - loss EMAs; :mod:`~emrakul.wrapper.observe` - observations;
* :mod:`~emrakul.wrapper.state` - the state; :mod:`~emrakul.wrapper.forward` - ``masked``.
"""

from emrakul.wrapper.checks import check_structure_fits, leaf_structures
from emrakul.wrapper.forward import layer_sparsity, masked, sparsity
from emrakul.wrapper.health import Health, health_vector, init_health, track_health
from emrakul.wrapper.initialize import init_state
from emrakul.wrapper.observe import observation, state_observation
from emrakul.wrapper.settings import WrapSettings
from emrakul.wrapper.state import EmrakulState, Knobs, find_state
from emrakul.wrapper.transform import transformation, wrap
from emrakul.wrapper.update import update_state

__all__ = [
    "EmrakulState",
    "Health",
    "Knobs",
    "WrapSettings",
    "check_structure_fits",
    "find_state",
    "health_vector",
    "init_health",
    "init_state",
    "layer_sparsity",
    "leaf_structures",
    "masked",
    "observation",
    "sparsity",
    "state_observation",
    "track_health",
    "transformation",
    "update_state",
    "wrap",
]
