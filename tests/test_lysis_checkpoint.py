"""Export of a lysed model (issue 19, item 5): orbax save and load, and lysis twice in a row."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from depgraph_models import kill_units, transformer

from emrakul.export import dependency_graph, load_lysed, lyse, save_lysed


def test_a_lysed_transformer_saves_and_loads_back_runnable(tmp_path):
    apply, v, ids = transformer()
    dead, _ = kill_units(dependency_graph(apply, v, ids), v, lambda p: p.startswith("['params']"))
    out = lyse(apply, dead, ids)
    size = save_lysed(tmp_path / "ckpt", out.variables, out.apply)
    assert size > 0
    template = jax.eval_shape(lambda: v)
    variables, model = load_lysed(tmp_path / "ckpt", apply, template)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(out.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        jax.jit(model)(variables, ids), apply(dead, ids), rtol=1e-5, atol=2e-5
    )
    with pytest.raises(ValueError, match="exists"):
        save_lysed(tmp_path / "ckpt", out.variables, out.apply)
    with pytest.raises(ValueError, match="template differs"):
        load_lysed(tmp_path / "ckpt", apply, {"params": template["params"]["Dense_0"]})
    with pytest.raises(ValueError, match="no lineage"):
        save_lysed(tmp_path / "other", out.variables, apply)


def test_lysis_of_a_lysed_model_composes_into_one_plan(tmp_path):
    apply, v, ids = transformer()
    graph = dependency_graph(apply, v, ids)
    checked = lambda p: p.startswith("['params']")
    first = lyse(apply, kill_units(graph, v, checked, seed=0)[0], ids)
    graph2 = dependency_graph(first.apply, first.variables, ids)
    dead2, killed2 = kill_units(graph2, first.variables, checked, seed=1)
    second = lyse(first.apply, dead2, ids)
    assert second.removed == killed2
    lineage = second.apply.lineage
    assert lineage.apply_fn is apply  # one replay of the original program, not a nested one
    np.testing.assert_allclose(
        second.apply(second.variables, ids), first.apply(dead2, ids), rtol=1e-5, atol=2e-5
    )
    save_lysed(tmp_path / "twice", second.variables, second.apply)
    variables, model = load_lysed(tmp_path / "twice", apply, v)
    np.testing.assert_allclose(model(variables, ids), first.apply(dead2, ids), rtol=1e-5, atol=2e-5)
