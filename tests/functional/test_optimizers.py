"""Inner optimisers: SGD is the old update bit for bit, Adam is torch.optim.Adam and differentiable twice."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lit_meta.functional import (
    InnerOptimizer,
    adam,
    adapt,
    adaptable_parameters,
    apply_updates,
    batched_adapt_and_score,
    functional_forward,
    sgd,
    sgd_step,
    task_buffers,
)
from tests.functional.conftest import make_tasks, run_task, tiny_mlp


def one_task(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(t[0] for t in make_tasks(1, (4,), dtype=dtype))  # type: ignore[return-value]


def step_sizes_of(kind: str, params: dict[str, Tensor]):
    """Learnable step sizes of each kind ``sgd`` takes, in the dtype of ``params``."""
    dtype = next(iter(params.values())).dtype
    if kind == "float":
        return 0.3
    if kind == "tensor":
        return torch.tensor(0.3, dtype=dtype, requires_grad=True)
    if kind == "per_parameter":  # Meta-SGD
        return {n: torch.full_like(p, 0.3).uniform_(0.1, 0.5).requires_grad_() for n, p in params.items()}
    # MAML++ LSLR: one rate per layer (weight and bias share it) and per step
    rates = [torch.tensor(r, dtype=dtype, requires_grad=True) for r in (0.3, 0.2, 0.1, 0.4)]
    return [{n: rates[2 * step + n.startswith("head")] for n in params} for step in range(2)]


def learned_tensors(step_size) -> list[Tensor]:
    sizes = step_size if isinstance(step_size, list) else [step_size]
    found = [t for s in sizes for t in (s.values() if isinstance(s, dict) else [s]) if isinstance(t, Tensor)]
    return list({id(t): t for t in found}.values())


def old_adapt(loss_fn, params: dict[str, Tensor], step_size, steps: int, first_order: bool) -> dict[str, Tensor]:
    """The inner loop as earlier releases wrote it: ``p - alpha * g`` by ``autograd.grad``."""
    for step in range(steps):
        size = step_size[step] if isinstance(step_size, list) else step_size
        grads = torch.autograd.grad(loss_fn(params), list(params.values()), create_graph=not first_order)
        params = {
            n: p - (size[n] if isinstance(size, dict) else size) * g
            for (n, p), g in zip(params.items(), grads, strict=True)
        }
    return params


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("kind", ["float", "tensor", "per_parameter", "per_step"])
def test_sgd_is_the_old_update_bit_for_bit_with_its_meta_gradients(kind, first_order):
    net = tiny_mlp(torch.float32)
    support_x, support_y, query_x, query_y = one_task(torch.float32)
    params = adaptable_parameters(net)
    step_size = step_sizes_of(kind, params)

    def loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_forward(net, p, {}, x), y)

    def support_loss(p: dict[str, Tensor]) -> Tensor:
        return loss(p, support_x, support_y)

    learned = [*params.values(), *learned_tensors(step_size)]
    new = adapt(support_loss, params, steps=2, step_size=step_size, first_order=first_order).params
    old = old_adapt(support_loss, params, step_size, 2, first_order)
    new_grads = torch.autograd.grad(loss(new, query_x, query_y), learned)
    old_grads = torch.autograd.grad(loss(old, query_x, query_y), learned)
    for name in params:
        assert torch.equal(new[name], old[name]), name
    for new_grad, old_grad in zip(new_grads, old_grads, strict=True):
        assert torch.equal(new_grad, old_grad)


def test_sgd_step_and_apply_updates_pass_other_parameters_through():
    params = {"a": torch.ones(2), "b": torch.ones(3)}
    updated = sgd_step(params, {"a": torch.full((2,), 2.0)}, {"a": torch.tensor([0.5, 0.25])})
    assert torch.equal(updated["a"], torch.tensor([0.0, 0.5]))
    assert updated["b"] is params["b"]
    assert apply_updates(params, {})["a"] is params["a"]
    with pytest.raises(KeyError, match=r"missing for \['a'\]"):
        sgd_step(params, {"a": torch.ones(2)}, {"b": torch.ones(3)})


def test_sgd_names_what_is_wrong_with_its_step_sizes():
    grads = {"a": torch.ones(2)}
    with pytest.raises(TypeError, match="got str"):
        sgd([0.1, "0.1"])
    with pytest.raises(KeyError, match=r"missing for \['a'\]"):
        sgd({"b": torch.ones(2)}).update(grads, 0, grads)
    two_steps = sgd([0.1, 0.2])
    state = two_steps.init(grads)
    for _ in range(2):
        _, state = two_steps.update(grads, state, grads)
    with pytest.raises(ValueError, match="got 2 per-step step sizes for more inner steps"):
        two_steps.update(grads, state, grads)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_adam_takes_the_steps_of_torch_optim_adam(dtype, tolerance):
    net = tiny_mlp(dtype)
    support_x, support_y, _, _ = one_task(dtype)
    settings = {"lr": 0.05, "betas": (0.8, 0.95), "eps": 1e-6}

    reference = copy.deepcopy(net)
    torch_adam = torch.optim.Adam(reference.parameters(), **settings)
    for _ in range(5):
        torch_adam.zero_grad()
        F.cross_entropy(reference(support_x), support_y).backward()
        torch_adam.step()

    def support_loss(p: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(functional_forward(net, p, {}, support_x), support_y)

    result = adapt(support_loss, adaptable_parameters(net), steps=5, optimizer=adam(**settings, eps_root=0.0))
    for name, expected in reference.named_parameters():
        torch.testing.assert_close(result.params[name], expected.detach(), rtol=tolerance, atol=tolerance)


def test_second_order_meta_gradient_through_adam_matches_finite_differences():
    """Of the initial weights and of a learned Adam step size."""
    net = tiny_mlp()
    task = one_task()
    names = list(adaptable_parameters(net))

    def meta_loss(lr: Tensor, *values: Tensor) -> Tensor:
        params = dict(zip(names, values, strict=True))
        return run_task(net, task, params, steps=3, optimizer=adam(lr=lr, betas=(0.8, 0.9))).query_loss

    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    values = [p.detach().clone().requires_grad_() for p in adaptable_parameters(net).values()]
    assert torch.autograd.gradcheck(meta_loss, [lr, *values])


def test_eps_root_keeps_the_second_order_gradient_finite_where_an_inner_gradient_is_zero():
    """The inner gradient of ``w[0]`` is ``2 w[0] x[0]**2 = 0``: with ``eps_root=0`` the meta-gradient
    is ``inf * 0 = nan`` (the derivative of ``sqrt`` at 0); the default gives the finite-difference one."""
    x = torch.tensor([0.0, 1.5], dtype=torch.float64)

    def meta_loss(w: Tensor, eps_root: float = 1e-16) -> Tensor:
        result = adapt(
            lambda p: (p["w"] * x).pow(2).sum(), {"w": w}, steps=2, optimizer=adam(lr=0.1, eps_root=eps_root)
        )
        return (result.params["w"] ** 3).sum()

    w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    (unprotected,) = torch.autograd.grad(meta_loss(w, eps_root=0.0), [w])
    assert unprotected[0].isnan()
    assert torch.autograd.gradcheck(meta_loss, [w])


def test_evaluation_with_adam_detaches_the_parameters_and_the_state_after_every_step():
    net = tiny_mlp()
    support_x, support_y, _, _ = one_task()
    beta1 = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    inner = adam(lr=0.1, betas=(beta1, 0.999))
    seen_states = []

    def recording_update(grads, state, params):
        seen_states.append(state)
        return inner.update(grads, state, params)

    recording = InnerOptimizer(inner.init, recording_update, inner.hyperparameters)

    def support_loss(p: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(functional_forward(net, p, {}, support_x), support_y)

    training = adapt(support_loss, adaptable_parameters(net), steps=3, optimizer=inner)
    with torch.no_grad():
        evaluation = adapt(support_loss, adaptable_parameters(net), steps=3, optimizer=recording)
    assert all(not t.requires_grad for state in seen_states for t in [*state.mu.values(), *state.nu.values()])
    for name, p in training.params.items():
        assert p.requires_grad
        assert not evaluation.params[name].requires_grad
        torch.testing.assert_close(evaluation.params[name], p.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("first_order", [False, True])
def test_a_learned_adam_step_size_gets_its_meta_gradient(first_order):
    """``dL/dlr = sum(dL/dtheta' * direction)`` after one step, in either order: the update is linear in ``lr``."""
    net = tiny_mlp()
    task = one_task()
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    result = run_task(net, task, steps=1, optimizer=adam(lr=lr), first_order=first_order)
    (meta_grad,) = torch.autograd.grad(result.query_loss, [lr])
    with torch.no_grad():
        unit_step = run_task(net, task, steps=1, optimizer=adam(lr=1.0))
    start = adaptable_parameters(net)
    directions = {n: unit_step.params[n] - p.detach() for n, p in start.items()}
    adapted = {n: p.detach().requires_grad_() for n, p in result.params.items()}
    query_loss = F.cross_entropy(functional_forward(net, adapted, {}, task[2]), task[3])
    query_grads = torch.autograd.grad(query_loss, list(adapted.values()))
    expected = sum((g * directions[n]).sum() for n, g in zip(adapted, query_grads, strict=True))
    torch.testing.assert_close(meta_grad, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "choice",
    [{"step_size": 0.1, "optimizer": adam()}, {}],
    ids=["both", "neither"],
)
def test_adapt_takes_exactly_one_of_step_size_and_optimizer(choice):
    params = adaptable_parameters(tiny_mlp())
    with pytest.raises(ValueError, match=r"exactly one of step_size= .* and optimizer="):
        adapt(lambda p: p["head.bias"].sum(), params, steps=1, **choice)


def halving_steps() -> tuple[InnerOptimizer, list]:
    """Gradient descent with rate 0.1 / 2^step, written with the three-argument ``update`` of before
    ``takes_loss``; ``calls`` records the arguments of every update."""
    calls = []

    def update(grads, step, params):
        calls.append((grads, step, params))
        return {n: -(0.1 / 2**step) * g for n, g in grads.items()}, step + 1

    return InnerOptimizer(lambda params: 0, update), calls


@pytest.mark.parametrize("path", ["per_task", "batched"])
def test_a_three_argument_inner_optimizer_still_works(path):
    net = tiny_mlp()
    tasks = make_tasks(2, (4,))
    optimizer, calls = halving_steps()
    assert optimizer.takes_loss is False
    if path == "per_task":
        task = tuple(t[0] for t in tasks)
        adapted = run_task(net, task, steps=3, optimizer=optimizer).params
        expected = run_task(net, task, steps=3, step_size=[0.1, 0.05, 0.025]).params
    else:
        common = (net, adaptable_parameters(net), task_buffers(net), F.cross_entropy, *tasks)
        adapted = batched_adapt_and_score(*common, steps=3, optimizer=optimizer).params
        expected = batched_adapt_and_score(*common, steps=3, step_size=[0.1, 0.05, 0.025]).params
    assert len(calls) == 3
    for name, p in expected.items():
        torch.testing.assert_close(adapted[name], p, rtol=1e-12, atol=1e-14)


def loss_scaled_descent() -> tuple[InnerOptimizer, list[Tensor]]:
    """``theta - 0.1 * loss * grad``: an optimiser that reads the support loss; ``seen`` records the losses."""
    seen: list[Tensor] = []

    def update(grads, step, params, loss):
        seen.append(loss)
        return {n: -0.1 * loss * g for n, g in grads.items()}, step + 1

    return InnerOptimizer(lambda params: 0, update, takes_loss=True), seen


def test_an_optimizer_that_takes_the_loss_reads_the_detached_support_loss_of_each_step():
    net = tiny_mlp()
    task = one_task()
    optimizer, seen = loss_scaled_descent()
    result = run_task(net, task, steps=3, optimizer=optimizer)
    assert len(seen) == 3 and not any(loss.requires_grad for loss in seen)
    torch.testing.assert_close(torch.stack(seen), result.support_losses, rtol=0, atol=0)


def test_under_vmap_an_optimizer_that_takes_the_loss_reads_its_own_tasks_loss():
    net = tiny_mlp()
    tasks = make_tasks(2, (4,))
    common = (net, adaptable_parameters(net), task_buffers(net), F.cross_entropy, *tasks)
    batched = batched_adapt_and_score(*common, steps=3, optimizer=loss_scaled_descent()[0], first_order=True)
    for index in range(2):
        task = tuple(t[index] for t in tasks)
        alone = run_task(net, task, steps=3, optimizer=loss_scaled_descent()[0], first_order=True)
        for name, p in alone.params.items():
            torch.testing.assert_close(batched.params[name][index], p, rtol=1e-12, atol=1e-14)
