"""Adapting to a task and scoring its query set leaves the backbone untouched."""

from __future__ import annotations

import pytest
import torch

from tests.functional.conftest import make_tasks, run_task, tiny_conv4


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("first_order", [False, True])
def test_adaptation_and_outer_backward_pollute_nothing(training, first_order):
    net = tiny_conv4()
    net.train(training)
    state = {n: t.clone() for n, t in net.state_dict().items()}
    task = tuple(t[0] for t in make_tasks(1, (1, 16, 16)))
    result = run_task(net, task, steps=2, step_size=0.4, first_order=first_order)
    result.query_loss.backward()
    assert result.query_output.shape == (9, 3)
    assert result.support_losses.shape == (2,)
    assert all(torch.equal(t, state[n]) for n, t in net.state_dict().items())
    assert all(p.grad is not None for p in net.parameters())
    assert net.training is training


def test_the_query_set_is_normalised_with_its_own_statistics():
    """With zero steps the query output is the plain network output with batch statistics of the query set."""
    net = tiny_conv4().eval()
    task = tuple(t[0] for t in make_tasks(1, (1, 16, 16)))
    result = run_task(net, task, steps=0, step_size=0.4)
    torch.testing.assert_close(result.query_output, net.train()(task[2]), rtol=0, atol=0)
