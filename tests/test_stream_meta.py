"""Meta-training the Magistrate on streams: the score, the groups, one generation (slow)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emrakul.agent.plan_network import PlanNetwork
from emrakul.controllers.magistrate import SHIPPED, load_policy
from emrakul.lab import stream_loop as sl
from emrakul.lab.meta import es, es_train, stream_train
from experiments.configs import stream as stream_config


def tiny_config():
    c = stream_config.get_config()
    c.host.width = (16, 16)
    c.data.num_samples = 500
    c.stream.num_tasks = 4
    c.stream.task_steps = 20
    c.prune.every = 10
    return c


def test_the_score_is_the_mean_over_the_last_tasks():
    tasks = 5
    fields = {f: jnp.zeros((tasks,)) for f in sl.TaskMetrics._fields}
    fields["val_accuracy"] = jnp.asarray([0.1, 0.2, 0.3, 0.4, 0.5])
    fields["test_accuracy"] = jnp.asarray([0.5, 0.4, 0.3, 0.2, 0.1])
    fields["sparsity"] = jnp.asarray([0.0, 0.5, 0.9, 0.9, 0.9])
    s = stream_train.last_tasks_score(2)(None, sl.TaskMetrics(**fields))
    np.testing.assert_allclose([s.val_accuracy, s.test_accuracy, s.sparsity], [0.45, 0.15, 0.9])


def test_stream_groups_check_the_window_and_the_stream():
    params, _, _, _ = load_policy(SHIPPED)  # any parameters of the network (no compilation)
    with pytest.raises(ValueError, match="window must lie in"):
        stream_train.stream_groups(tiny_config(), [(8, 8)], PlanNetwork(), params, window=5)
    c = tiny_config()
    c.stream.task_steps = 25
    with pytest.raises(ValueError, match="must be a multiple"):
        stream_train.stream_groups(c, [(8, 8)], PlanNetwork(), params)
    (group,) = stream_train.stream_groups(tiny_config(), [(8, 8)], PlanNetwork(), params, window=2)
    assert group.name == "8,8" and group.trainer.num_intervals == 4
    space = stream_train.STREAM_SPACE
    assert space.churn_after_end and not space.lyse_at_end and space.end == 0.1


@pytest.mark.slow
def test_one_generation_scores_genomes_on_common_streams():
    """Two genomes (the neutral one twice) on the same seeds score the same; the score is the
    last tasks' validation accuracy and the hosts end at the target sparsity."""
    c = tiny_config()
    network = PlanNetwork()
    params = es_train.template_params(c, network)
    groups = stream_train.stream_groups(c, [(16, 16)], network, params, window=2)
    genomes = jax.tree.map(lambda x: jnp.stack([x, x]), params)
    (scores,) = es.scores_fn(groups)(genomes, jax.random.split(jax.random.PRNGKey(0), 2))
    assert scores.val_accuracy.shape == (2, 2)
    np.testing.assert_array_equal(scores.val_accuracy[0], scores.val_accuracy[1])
    assert np.all((scores.val_accuracy > 0) & (scores.val_accuracy <= 1))
    np.testing.assert_allclose(scores.sparsity, 0.9, atol=0.01)
