"""The inner loop: second- and first-order meta-gradients, learned step sizes, ANIL, evaluation, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lit_meta.errors import LitMetaError, NonFiniteLossError
from lit_meta.functional import (
    adapt,
    adaptable_parameters,
    check_finite_losses,
    functional_forward,
    head_parameter_names,
)
from tests.functional.conftest import make_tasks, plain_gradients, run_task, tiny_mlp


def one_task(item_shape: tuple[int, ...] = (4,)) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(t[0] for t in make_tasks(1, item_shape))  # type: ignore[return-value]


def test_second_order_meta_gradient_matches_finite_differences(tiny_net_and_tasks):
    net, tasks = tiny_net_and_tasks
    task = tuple(t[0] for t in tasks)
    names = list(adaptable_parameters(net))

    def meta_loss(*values: Tensor) -> Tensor:
        return run_task(net, task, dict(zip(names, values, strict=True)), steps=2, step_size=0.3).query_loss

    values = [p.detach().clone().requires_grad_() for p in adaptable_parameters(net).values()]
    assert torch.autograd.gradcheck(meta_loss, values)


def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_weights(tiny_net_and_tasks):
    net, tasks = tiny_net_and_tasks
    task = tuple(t[0] for t in tasks)
    result = run_task(net, task, steps=2, step_size=0.3, first_order=True)
    meta_grads = torch.autograd.grad(result.query_loss, list(net.parameters()))
    query_grads = plain_gradients(net, result.params, *task[2:])
    for meta, query in zip(meta_grads, query_grads, strict=True):
        torch.testing.assert_close(meta, query, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_sgd_step_sizes_get_the_gradient_of_one_inner_step(first_order):
    """With ``theta' = theta - alpha * g``: ``dL/dalpha = -g * dL/dtheta'``, in either order."""
    net = tiny_mlp()
    task = one_task()
    step_sizes = {n: torch.full_like(p, 0.1, requires_grad=True) for n, p in net.named_parameters()}
    result = run_task(net, task, steps=1, step_size=step_sizes, first_order=first_order)
    result.query_loss.backward()

    support_grads = plain_gradients(net, adaptable_parameters(net), *task[:2])
    query_grads = plain_gradients(net, result.params, *task[2:])
    for name, g, q in zip(step_sizes, support_grads, query_grads, strict=True):
        torch.testing.assert_close(step_sizes[name].grad, -g * q, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("first_order", [False, True])
def test_per_step_per_layer_step_sizes_get_gradients(first_order):
    """Second order: the exact derivative of the meta-loss. First order drops the dependence
    of later inner gradients on earlier rates, so only that a gradient arrives is checked."""
    net = tiny_mlp()
    task = one_task()
    names = list(adaptable_parameters(net))

    def meta_loss(*rates: Tensor) -> Tensor:
        # MAML++ LSLR: one learned rate per layer (weight and bias share it) and per step
        per_step = [{n: rates[2 * step + int(n.startswith("head"))] for n in names} for step in range(2)]
        return run_task(net, task, steps=2, step_size=per_step, first_order=first_order).query_loss

    rates = [torch.tensor(r, dtype=torch.float64, requires_grad=True) for r in (0.3, 0.2, 0.1, 0.4)]
    if not first_order:
        assert torch.autograd.gradcheck(meta_loss, rates)
    meta_loss(*rates).backward()
    assert all(r.grad is not None and r.grad != 0 for r in rates)


def test_anil_adapts_only_the_head_and_the_body_still_gets_the_outer_gradient():
    net = tiny_mlp()
    params = adaptable_parameters(net)
    head = head_parameter_names(net)
    assert head == ["head.weight", "head.bias"]
    result = run_task(net, one_task(), params, steps=2, step_size=0.5, inner_params=head)
    for name, p in params.items():
        if name in head:
            assert not torch.equal(result.params[name], p)
        else:
            assert result.params[name] is p
    result.query_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())


def support_loss_of(net, support_x, support_y):
    return lambda p: F.cross_entropy(functional_forward(net, p, {}, support_x), support_y)


def test_adapt_leaves_the_starting_parameters_alone():
    net = tiny_mlp()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    result = adapt(support_loss_of(net, *one_task()[:2]), adaptable_parameters(net), steps=3, step_size=0.5)
    assert result.support_losses.shape == (3,)
    assert not result.support_losses.requires_grad
    assert result.support_losses[-1] < result.support_losses[0]
    for name, p in net.named_parameters():
        assert torch.equal(p, before[name])
        assert p.grad is None


@pytest.mark.parametrize("first_order", [False, True])
def test_evaluation_without_an_outer_graph_gives_the_same_detached_parameters(first_order):
    net = tiny_mlp()
    loss_fn = support_loss_of(net, *one_task()[:2])
    settings = {"steps": 2, "step_size": 0.5, "first_order": first_order}
    training = adapt(loss_fn, adaptable_parameters(net), **settings)
    with torch.no_grad():
        evaluation = adapt(loss_fn, adaptable_parameters(net), **settings)
    frozen = adapt(loss_fn, {n: p.detach() for n, p in net.named_parameters()}, **settings)
    for name, p in training.params.items():
        assert p.requires_grad
        for other in (evaluation, frozen):
            assert not other.params[name].requires_grad
            torch.testing.assert_close(other.params[name], p.detach(), rtol=0, atol=0)


def test_bad_arguments_are_named():
    params = adaptable_parameters(tiny_mlp())
    with pytest.raises(ValueError, match=r"cannot adapt \['nope'\]"):
        adapt(lambda p: p["head.bias"].sum(), params, steps=1, step_size=0.1, inner_params=["nope"])
    with pytest.raises(ValueError, match="got 1 per-step step sizes for 2 inner steps"):
        adapt(lambda p: p["head.bias"].sum(), params, steps=2, step_size=[0.1])


def test_inference_mode_is_refused_with_the_way_out():
    params = adaptable_parameters(tiny_mlp())
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"enable_adaptation_grad\(\)"):
        adapt(lambda p: p["head.bias"].sum(), params, steps=1, step_size=0.1)


def test_an_inner_loss_that_blows_up_names_the_step_and_the_fix():
    net = tiny_mlp()
    support_loss = support_loss_of(net, *one_task()[:2])
    with pytest.raises(NonFiniteLossError, match=r"at inner step [1-9].*lower it") as error:
        adapt(lambda p: support_loss(p) ** 4, adaptable_parameters(net), steps=10, step_size=1e6)
    assert isinstance(error.value, LitMetaError)
    assert isinstance(error.value, FloatingPointError)


def test_a_non_finite_loss_before_any_update_points_at_the_data():
    with pytest.raises(NonFiniteLossError, match="nan at inner step 0 of task 1, before any inner update"):
        check_finite_losses(torch.tensor([[1.0, 0.5], [float("nan"), 1.0]]))
    check_finite_losses(torch.tensor([1.0, 0.5]))
