"""ANIL: MAML's objective with an inner loop on the head only."""

from __future__ import annotations

from typing import Any

from torch import nn

from lit_meta.learners.gradient import GradientMetaLearner, InnerParams


class ANIL(GradientMetaLearner):
    """Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, 2020, ICLR, arXiv:1909.09157).

    MAML's objective (:meth:`~lit_meta.learners.gradient.GradientMetaLearner.meta_loss_on_path`)
    with an inner loop that updates only the final linear layer; the body is meta-learned
    in the outer loop only, so features are reused, not adapted. The paper matches MAML's
    accuracy (Omniglot 20-way 1-shot 96.2 vs 96.0; miniImageNet 5-way 5-shot 61.5 vs
    61.3) with MAML's hyperparameters.

    Args:
        backbone: the network; its last ``nn.Linear`` is the head, of size ways.
        inner_params: defaults to ``"head"``.
        **kwargs: the options of :class:`~lit_meta.learners.gradient.GradientMetaLearner`
            (``inner_lr``, ``inner_steps``, ``first_order``, ``execution``, ...) and the outer loop's.
    """

    def __init__(self, backbone: nn.Module, inner_params: InnerParams = "head", **kwargs: Any) -> None:
        super().__init__(backbone, inner_params=inner_params, **kwargs)
