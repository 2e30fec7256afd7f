"""An episode as an ordered sequence: the label channels sequence learners read, and presentation counts.

Sequence (model-based) learners read the support set of an episode in order, one item per
step, each with a label channel, then each query as one more step (Santoro et al., 2016,
"Meta-Learning with Memory-Augmented Neural Networks", ICML, Section 4; Mishra et al., 2018,
"A Simple Neural Attentive Meta-Learner", ICLR, Section 3). The order is the episode's
support order, so these learners want :class:`~lit_meta.data.datamodule.EpisodicDataModule`
``(support_order="random")``: in the default class-major order the position of an item
gives its label away.

Two label encodings (:data:`LabelInput`):

* ``"offset"`` (MANN): step ``t`` carries the one-hot label of step ``t - 1``; the first
  step carries zeros. The learner predicts each support label before it sees it, and a
  query step carries the label of the last support item.
* ``"masked"`` (SNAIL): each support step carries its own label, a query step zeros.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LabelInput = Literal["offset", "masked"]


def label_channels(support_y: Tensor, ways: int, labels: LabelInput, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The label channels of the support steps and of a query step.

    Args:
        support_y: support labels in sequence order, ``[*, steps]``.
        ways: the size of the one-hot channel.
        labels: ``"offset"`` or ``"masked"`` (see the module docstring).
        dtype: the channels' dtype (the embeddings').

    Returns:
        ``[*, steps, ways]`` for the support steps and ``[*, 1, ways]`` for any query step.
    """
    one_hot = F.one_hot(support_y, ways).to(dtype)
    if labels == "masked":
        return one_hot, torch.zeros_like(one_hot[..., :1, :])
    if labels == "offset":
        return torch.cat([torch.zeros_like(one_hot[..., :1, :]), one_hot[..., :-1, :]], dim=-2), one_hot[..., -1:, :]
    raise ValueError(f"labels={labels!r}: use 'offset' or 'masked'")


def presentation_numbers(support_y: Tensor) -> Tensor:
    """For each support step, which presentation of its class it is: 1 for the first, 2 for the second ...

    Santoro et al. (2016), Table 1, report accuracy by presentation ("instance"): the
    prediction at a class's first presentation is a guess, at its second the learner has
    seen one labelled example of it. ``[*, steps] -> [*, steps]`` integers.
    """
    one_hot = F.one_hot(support_y)
    return (one_hot.cumsum(-2) * one_hot).sum(-1)
