"""ANIL: MAML that adapts only the head."""

from __future__ import annotations

from typing import Literal

from torch import nn

from lit_meta.learners.maml import MAML, Execution


class ANIL(MAML):
    """Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, 2020, ICLR, arXiv:1909.09157).

    MAML whose inner loop updates only the final linear layer; the body is
    meta-learned in the outer loop only, so features are reused, not adapted.
    The paper matches MAML's accuracy (Omniglot 20-way 1-shot 96.2 vs 96.0;
    miniImageNet 5-way 5-shot 61.5 vs 61.3) with MAML's hyperparameters.

    Args: as :class:`MAML`; ``adapt`` defaults to ``"head"``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        adapt: Literal["all", "head"] | list[str] = "head",
        learn_inner_lr: bool = False,
        multi_step_loss_steps: int = 0,
        first_order_steps: int = 0,
        execution: Execution = "auto",
        meta_lr: float = 1e-3,
        meta_optimizer: Literal["adam", "sgd"] = "adam",
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
    ) -> None:
        super().__init__(
            backbone,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            first_order=first_order,
            adapt=adapt,
            learn_inner_lr=learn_inner_lr,
            multi_step_loss_steps=multi_step_loss_steps,
            first_order_steps=first_order_steps,
            execution=execution,
            meta_lr=meta_lr,
            meta_optimizer=meta_optimizer,
            weight_decay=weight_decay,
            lr_schedule=lr_schedule,
        )
