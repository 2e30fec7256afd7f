"""ANIL: MAML that adapts only the head."""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from lit_meta.learners.maml import MAML


class ANIL(MAML):
    """Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, 2020, ICLR, arXiv:1909.09157).

    MAML whose inner loop updates only the final linear layer; the body is
    meta-learned in the outer loop only, so features are reused, not adapted.
    The paper matches MAML's accuracy (Omniglot 20-way 1-shot 96.2 vs 96.0;
    miniImageNet 5-way 5-shot 61.5 vs 61.3) with MAML's hyperparameters.

    Args: those of :class:`MAML` (passed on as keywords); ``adapt`` defaults to ``"head"``.
    """

    def __init__(self, backbone: nn.Module, adapt: Literal["all", "head"] | list[str] = "head", **kwargs: Any) -> None:
        super().__init__(backbone, adapt=adapt, **kwargs)
