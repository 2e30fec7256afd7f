"""The old names keep working for one release: each warns, names its replacement and gives the same result."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_meta.functional import (
    ScoredTask,
    TaskLoss,
    adapt,
    adapt_and_score,
    adaptable_parameters,
    batched_adapt_and_score,
    batched_task_loss,
    head_parameter_names,
    task_buffers,
    task_loss,
)
from tests.functional.conftest import make_tasks, tiny_mlp


def arguments(tasks: int | None = None):
    """Positional arguments of ``adapt_and_score`` (one task) or of the batched form (``tasks`` tasks)."""
    net = tiny_mlp()
    data = make_tasks(tasks or 1, (4,))
    if tasks is None:
        data = tuple(t[0] for t in data)
    return net, adaptable_parameters(net), task_buffers(net), F.cross_entropy, *data


def assert_same(old: ScoredTask, new: ScoredTask) -> None:
    torch.testing.assert_close(old.query_loss, new.query_loss, rtol=0, atol=0)
    torch.testing.assert_close(old.params, new.params, rtol=0, atol=0)


def test_task_loss_is_adapt_and_score():
    with pytest.warns(DeprecationWarning, match="task_loss was renamed to adapt_and_score"):
        old = task_loss(*arguments(), steps=2, step_size=0.3)
    assert_same(old, adapt_and_score(*arguments(), steps=2, step_size=0.3))
    assert TaskLoss is ScoredTask


def test_batched_task_loss_is_batched_adapt_and_score():
    with pytest.warns(DeprecationWarning, match="batched_task_loss was renamed to batched_adapt_and_score"):
        old = batched_task_loss(*arguments(2), steps=2, step_size=0.3)
    assert_same(old, batched_adapt_and_score(*arguments(2), steps=2, step_size=0.3))


@pytest.mark.parametrize(
    ("function", "tasks"), [(adapt_and_score, None), (batched_adapt_and_score, 2)], ids=["per_task", "batched"]
)
def test_adapt_names_is_inner_params(function, tasks):
    head = head_parameter_names(tiny_mlp())
    with pytest.warns(DeprecationWarning, match=r"adapt_names= was renamed to inner_params="):
        old = function(*arguments(tasks), steps=1, step_size=0.3, adapt_names=head)
    assert_same(old, function(*arguments(tasks), steps=1, step_size=0.3, inner_params=head))


def test_the_adapt_keyword_of_adapt_is_inner_params():
    net = tiny_mlp()
    support_x, support_y, _, _ = (t[0] for t in make_tasks(1, (4,)))

    def support_loss(p):
        return F.cross_entropy(torch.func.functional_call(net, p, (support_x,)), support_y)

    head = head_parameter_names(net)
    with pytest.warns(DeprecationWarning, match=r"adapt\(\): the keyword adapt= was renamed to inner_params="):
        old = adapt(support_loss, adaptable_parameters(net), steps=2, step_size=0.3, adapt=head)
    new = adapt(support_loss, adaptable_parameters(net), steps=2, step_size=0.3, inner_params=head)
    torch.testing.assert_close(old.params, new.params, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"got both adapt= and inner_params="):
        adapt(support_loss, adaptable_parameters(net), steps=1, step_size=0.3, adapt=head, inner_params=head)
