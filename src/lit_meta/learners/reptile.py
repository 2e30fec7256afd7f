"""Reptile: first-order meta-learning by moving the initialisation towards adapted weights."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.data.episode import EpisodeBatch
from lit_meta.functional import adapt as adapt_parameters
from lit_meta.functional import adaptable_parameters, functional_forward
from lit_meta.functional.optimizers import AdamState, InnerOptimizer, StepSize
from lit_meta.learners.gradient import GradientMetaLearner, InnerOptimizerName, InnerParams, loss_with_gradients

CARRIED_STATE_KEY = "reptile_carried_inner_state"
"""The checkpoint entry holding :attr:`Reptile.carried_inner_state`."""

REPLACED_OPTIONS = ("first_order", "execution", "vmap_memory_budget_mb")
"""Options of :class:`~lit_meta.learners.gradient.GradientMetaLearner` that Reptile's own
:meth:`~Reptile.meta_loss` replaces."""


class Reptile(GradientMetaLearner):
    """Reptile (Nichol, Achiam & Schulman, 2018, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999).

    For each task, ``inner_steps`` steps of the inner optimiser from the current
    weights ``theta`` give ``phi``; the outer update moves ``theta`` towards them:
    ``theta <- theta + epsilon * mean_i(phi_i - theta)`` (batched Reptile,
    Algorithm 2) with ``epsilon = meta_lr``. It is implemented as the gradient
    ``(theta - mean_i phi_i)`` handed to the outer optimiser, so with
    ``meta_optimizer="sgd"`` (the default here) the step is exactly the
    paper's; Adam gives the variant the paper also reports.

    ``mode="serial"`` is Algorithm 1 within a meta-batch: the tasks are adapted
    one after another, each from the weights the previous update left, and the
    step lands exactly on the serial result with SGD.

    During meta-training the inner loop fits each episode's support and query
    examples together (Reptile needs no train/test split within a task);
    evaluation adapts on the support set and scores the query set.

    ``inner_batch_size`` makes each training inner step take a minibatch of the
    episode, as the paper does (Algorithm 2 and Table 3: 5 steps on minibatches
    of 10 out of 10 examples per class, one pass over the task): step ``k`` takes
    the ``k``-th window of the episode in class-balanced order (the first example
    of every class, then the second, ...), wrapping round when the steps outrun
    the examples. Deviation: the authors' minibatches are drawn at random
    without replacement, so theirs are not balanced by class; the episode's
    examples are already in random order within each class, so no random draw is
    needed here and resuming from a checkpoint replays the same minibatches.
    Evaluation always adapts on the whole support set.

    Paper setup, Omniglot 5-way 1-shot (Table 3): Conv4 with 64 filters and strided
    convolutions in the authors' code (``Conv4(downsample="stride")``), inner Adam lr
    1e-3 (``beta1=0`` in the authors' code; ``inner_optimizer="adam"``) with 5 steps of
    batch 10 (``inner_batch_size=10``; without it, the whole episode each step),
    meta-batch 5, outer step size 1.0 linearly annealed to 0 over 100,000 iterations, 50 test steps;
    97.68 ± 0.04% (transductive). The authors' code keeps one Adam whose moments carry
    over from task to task (it resets the weights after each task, not the optimiser's
    slots); ``carry_inner_state=True`` does the same. Without it each task starts with
    fresh moments, so tasks stay independent.
    At evaluation the authors take minibatches of 5 of the support set (the whole of
    it in 1-shot 5-way); here every evaluation step takes the whole support set. Their
    transductive test then scores one query per class in one batch, so BatchNorm normalises
    those N queries together; the Omniglot configs match it with ``eval_queries: 1`` (the
    query batch size changes the accuracy through BatchNorm's batch statistics).

    Args:
        backbone: the network; output size = ways.
        inner_lr: inner step size (SGD) or learning rate (Adam).
        inner_steps: inner steps during meta-training.
        eval_inner_steps: inner steps at evaluation (default ``inner_steps``).
        inner_params: which parameters the inner loop updates.
        inner_optimizer: ``"sgd"`` or ``"adam"`` (the paper's).
        inner_batch_size: examples per training inner step; ``None``: the whole episode.
        carry_inner_state: the inner Adam's moments and step count carry over from task to
            task through meta-training, in task order, as in the authors' code. Each
            evaluation task (and :meth:`adapt`) starts from the carried state and leaves it as
            it was. Saved in checkpoints. Needs ``inner_optimizer="adam"``.
        mode: ``"batched"`` or ``"serial"``.
        meta_lr: the outer step size ``epsilon``.
        meta_optimizer: the outer optimiser; plain SGD makes the update Reptile's.
        **kwargs: the other outer-loop options of :class:`~lit_meta.learners.base.MetaLearner`
            (``lr_schedule``, ...).
    """

    def __init__(
        self,
        backbone: nn.Module,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        eval_inner_steps: int | None = None,
        inner_params: InnerParams = "all",
        inner_optimizer: InnerOptimizerName = "sgd",
        inner_batch_size: int | None = None,
        carry_inner_state: bool = False,
        mode: Literal["batched", "serial"] = "batched",
        meta_lr: float = 1.0,
        meta_optimizer: Literal["adam", "sgd"] = "sgd",
        **kwargs: Any,
    ) -> None:
        if inner_batch_size is not None and inner_batch_size < 1:
            raise ValueError(f"inner_batch_size must be a positive number of examples or None, got {inner_batch_size}")
        if carry_inner_state and inner_optimizer != "adam":
            raise ValueError(
                f"carry_inner_state carries the inner Adam's moments from task to task; it needs "
                f"inner_optimizer='adam', got {inner_optimizer!r}"
            )
        super().__init__(
            backbone,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            inner_params=inner_params,
            inner_optimizer=inner_optimizer,
            meta_lr=meta_lr,
            meta_optimizer=meta_optimizer,
            **kwargs,
        )
        # Reptile has its own meta-gradient (never through the inner loop) on its own loop:
        # the base's options for MAML's objective are not Reptile's hyperparameters.
        for name in REPLACED_OPTIONS:
            self.hparams.pop(name, None)
            self._hparams_initial.pop(name, None)
        self.carried_inner_state: AdamState | None = None
        """The inner Adam's state after the last training task (``carry_inner_state``), else ``None``."""

    def configure_inner_optimizer(self, steps: int, step_sizes: StepSize | Sequence[StepSize]) -> InnerOptimizer:
        """The base's inner optimiser; with ``carry_inner_state``, starting from :attr:`carried_inner_state`."""
        optimizer = super().configure_inner_optimizer(steps, step_sizes)
        if not self.hparams.get("carry_inner_state"):
            return optimizer

        def init(params: Mapping[str, Tensor]) -> AdamState:
            carried = self.carried_inner_state
            if carried is None:
                return optimizer.init(params)
            return AdamState(
                carried.count,
                {name: carried.mu[name].to(p) for name, p in params.items()},
                {name: carried.nu[name].to(p) for name, p in params.items()},
            )

        return optimizer._replace(init=init)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.carried_inner_state is not None:
            checkpoint[CARRIED_STATE_KEY] = self.carried_inner_state._asdict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        carried = checkpoint.get(CARRIED_STATE_KEY)
        self.carried_inner_state = None if carried is None else AdamState(**carried)

    def meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """The mean post-adaptation query loss (for logging) carrying Reptile's update as its gradient."""
        theta = adaptable_parameters(self.backbone)
        serial = self.hparams.mode == "serial"
        current = {name: p.detach() for name, p in theta.items()}
        moved = {name: torch.zeros_like(p) for name, p in theta.items()}
        buffers = self.buffers_for_adaptation()
        steps = self.hparams.inner_steps
        losses, support_losses = [], []
        epsilon = self.hparams.meta_lr
        optimizer = self.configure_inner_optimizer(steps, self.step_sizes(steps))
        if self.hparams.get("carry_inner_state"):
            optimizer = optimizer._replace(update=self._carrying(optimizer.update))
        for episode in batch:
            x = torch.cat([episode.support_x, episode.query_x])
            y = torch.cat([episode.support_y, episode.query_y])
            windows = iter(inner_minibatches(y, self.hparams.get("inner_batch_size"), steps))

            def loss(p: dict[str, Tensor], x: Tensor = x, y: Tensor = y, windows: Iterator = windows) -> Tensor:
                rows = next(windows)
                return self.task_loss(functional_forward(self.backbone, p, buffers, x[rows]), y[rows])

            result = adapt_parameters(
                loss,
                current,
                steps=steps,
                optimizer=optimizer,
                inner_params=self.inner_param_names,
                check_finite=False,
            )
            support_losses.append(result.support_losses)
            with torch.no_grad():
                out = functional_forward(self.backbone, result.params, buffers, episode.query_x)
                losses.append(self.task_loss(out, episode.query_y))
                for name, phi in result.params.items():
                    if serial:
                        current[name] = current[name] + epsilon * (phi - current[name])
                    else:
                        moved[name] += (phi - current[name]) / len(batch)
        self.check_adaptation(torch.stack(support_losses), torch.stack(losses))
        # SGD with rate epsilon on these gradients lands exactly on Reptile's update.
        grads = [(theta[n].detach() - current[n]) / epsilon if serial else -moved[n] for n in theta]
        return loss_with_gradients(torch.stack(losses).mean(), list(theta.values()), grads)

    def _carrying(self, update: Callable[..., tuple[dict[str, Tensor], AdamState]]) -> Callable:
        """``update``, keeping the state it returns as :attr:`carried_inner_state` for the next task."""

        def carrying(grads: Mapping[str, Tensor], state: AdamState, params: Mapping[str, Tensor]) -> tuple:
            updates, state = update(grads, state, params)
            self.carried_inner_state = state  # detached: Reptile adapts from detached weights, outside any graph
            return updates, state

        return carrying


def inner_minibatches(y: Tensor, size: int | None, steps: int) -> list[Tensor | slice]:
    """The rows of each of ``steps`` inner steps on an episode labelled ``y``: windows of ``size``
    in class-balanced order, wrapping round; every row each step when ``size`` is ``None``.

    Raises:
        ValueError: ``size`` exceeds the episode's examples.
    """
    if size is None:
        return [slice(None)] * steps
    n = y.shape[0]
    if size > n:
        raise ValueError(f"inner_batch_size={size} exceeds the {n} examples of a training episode; give at most {n}")
    # class labels, or one class for regression targets (which keep their order)
    classes = y if y.dim() == 1 and not y.is_floating_point() else torch.zeros(n, dtype=torch.long, device=y.device)
    labels = torch.unique(classes, return_inverse=True)[1]
    one_hot = F.one_hot(labels)
    rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1  # the example's place among its class's
    order = torch.argsort(rank * n + labels, stable=True)
    window = torch.arange(size, device=y.device)
    return [order[(k * size + window) % n] for k in range(steps)]
