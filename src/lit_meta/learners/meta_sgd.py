"""Meta-SGD: MAML with a learned step size and direction for every weight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_meta.functional import StepSize, adaptable_parameters
from lit_meta.learners.execution import Execution
from lit_meta.learners.gradient import GradientMetaLearner, InnerParams


class MetaSGD(GradientMetaLearner):
    """Meta-SGD (Li, Zhou, Chen & Li, 2017, arXiv:1707.09835).

    The inner update is ``theta - alpha * grad`` with ``alpha`` a learned tensor
    of the shape of ``theta``: a step size and a direction per weight, meta-learned
    together with the initialisation on MAML's objective. The paper takes one inner
    step (Omniglot 5-way 1-shot 99.53%, 20-way 1-shot 95.93%; miniImageNet 5-way
    1-shot 50.47%) with meta-batch 32 (Omniglot) and Adam ``meta_lr=1e-3``; ``alpha``
    starts at ``inner_lr`` everywhere (the paper draws it from U[0.005, 0.1]). The
    inner optimiser is SGD by definition.

    Args:
        backbone: the network; its output size must equal the episodes' ways.
        inner_lr: the initial value of every learned rate.
        inner_steps: inner steps during meta-training (the same ``alpha`` at every step).
        eval_inner_steps: inner steps at evaluation (default ``inner_steps``).
        first_order: drop the second-order terms (``alpha`` still learns).
        inner_params: which parameters adapt (and get learned rates).
        execution: see :class:`~lit_meta.learners.gradient.GradientMetaLearner`.
        **kwargs: the other options of :class:`~lit_meta.learners.gradient.GradientMetaLearner`
            and the outer loop's.
    """

    def __init__(
        self,
        backbone: nn.Module,
        inner_lr: float = 0.1,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        inner_params: InnerParams = "all",
        execution: Execution = "auto",
        **kwargs: Any,
    ) -> None:
        if kwargs.get("inner_optimizer", "sgd") != "sgd":
            raise ValueError("MetaSGD learns SGD step sizes; it takes no inner_optimizer")
        super().__init__(
            backbone,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            first_order=first_order,
            inner_params=inner_params,
            execution=execution,
            **kwargs,
        )
        params = adaptable_parameters(self.backbone)
        self.inner_lrs = nn.ParameterList(
            [nn.Parameter(torch.full_like(params[name].detach(), inner_lr)) for name in self.inner_param_names]
        )

    def learned_step_sizes(self) -> dict[str, Tensor]:
        """The mean learned rate of every adapted tensor (the rates are per weight)."""
        return {name: rate.detach().mean() for name, rate in zip(self.inner_param_names, self.inner_lrs, strict=True)}

    def step_sizes(self, steps: int) -> StepSize | Sequence[StepSize]:
        """``alpha``: one learned tensor per adapted parameter, the same at every step."""
        return dict(zip(self.inner_param_names, self.inner_lrs, strict=True))
