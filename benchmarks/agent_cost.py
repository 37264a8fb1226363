"""The Magistrate's cost grows with the number of regions, not with the host's parameters.

Run: ``python -m benchmarks.agent_cost [--rounds 30]``

Two synthetic hosts with the same 138 output units (regions) but 10x different parameter
counts (kernels [40, 64], [64, 64], [64, 10] vs [400, 64], [640, 64], [64, 10]); and, for
contrast, a host with 10x the regions. For each: the time of building the observation
(``features.observe``: one pass over every weight, so it scales with parameters), of the actor
(act), and of one PPO gradient step of the agent on a batch of 64 observations (update).
Medians of interleaved rounds; ratios to the 1x host.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from benchmarks._timing import interleaved_medians, markdown_table
from emrakul import vitals as vit
from emrakul.agent import features
from emrakul.agent import networks as nw
from emrakul.controllers.base import Observation
from emrakul.masks.structures import Units
from emrakul.surgery.lifecycle import ALIVE
from emrakul.vitals import regions as rg

HOSTS = {
    "1x params, 138 regions": [(40, 64), (64, 64), (64, 10)],
    "10x params, 138 regions": [(400, 64), (640, 64), (64, 10)],
    "10x regions (640 units)": [(40, 640), (640, 640), (640, 10)],
}


def make_obs(shapes, key):
    params = {f"Dense_{i}": {"kernel": jax.random.normal(jax.random.fold_in(key, i), s) * 0.1}
              for i, s in enumerate(shapes)}  # fmt: skip
    grads = jax.tree.map(lambda p: 0.01 * p, params)
    v = vit.update(vit.init(params), params, grads)
    state = jax.tree.map(lambda p: jnp.full(p.shape, ALIVE, jnp.int8), params)
    return params, Observation(
        step=jnp.int32(100),
        total_steps=1000,
        params=params,
        grads=grads,
        state=state,
        vitals=v,
        layer_size=tuple(a * b for a, b in shapes),
        target=jnp.full((len(shapes),), 0.9),
        key=key,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    key = jax.random.PRNGKey(0)
    agent = nw.Agent()
    tx = optax.adam(1e-4)
    fns, info = {}, {}
    for name, shapes in HOSTS.items():
        params, obs = make_obs(shapes, key)
        layout = rg.layout(params, Units(-1))
        r = layout.num_regions
        observe = jax.jit(lambda o, layout=layout, r=r: features.observe(o, layout, r, 4))
        agent_obs = observe(obs)
        variables = agent.init(key, agent_obs)
        opt = tx.init(variables)
        act = jax.jit(lambda v, o: nw.mode(agent.apply(v, o, method=nw.Agent.actor), o))
        batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (64, *x.shape)), agent_obs)

        @jax.jit
        def update(v, s, b):
            def loss(v):
                pol, val = jax.vmap(agent.apply, in_axes=(None, 0))(v, b)
                a = jax.vmap(nw.mode)(pol, b)
                return -jnp.mean(jax.vmap(nw.log_prob)(pol, b, a)) + jnp.mean(val**2)

            g = jax.grad(loss)(v)
            u, s = tx.update(g, s, v)
            return optax.apply_updates(v, u), s

        fns[f"{name}|observe"] = lambda f=observe, o=obs: f(o)
        fns[f"{name}|act"] = lambda f=act, v=variables, o=agent_obs: f(v, o)
        fns[f"{name}|update"] = lambda f=update, v=variables, s=opt, b=batch: f(v, s, b)
        info[name] = (sum(a * b for a, b in shapes), r)
    med = interleaved_medians(fns, rounds=args.rounds, warmup=2)
    base = next(iter(HOSTS))
    rows = []
    for name in HOSTS:
        n_params, r = info[name]
        row = [name, n_params, r]
        for part in ("observe", "act", "update"):
            t = med[f"{name}|{part}"]
            row.append(f"{t * 1e3:.3f} ({t / med[f'{base}|{part}']:.2f}x)")
        rows.append(row)
    print(f"\njax {jax.__version__}, {jax.default_backend()}, medians of {args.rounds} rounds")
    print(markdown_table(["host", "kernel params", "regions", "observe ms", "act ms",
                          "update ms (batch 64)"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
