"""Pieces shared by learners that score classes, whatever their family.

:func:`class_one_hot` turns an episode's support labels into the one-hot targets that
metric-based learners summarise a support set with, LEO encodes and Baseline sizes its
head from; :class:`Temperature` scales class scores (Prototypical and Matching networks,
Baseline++).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.errors import EpisodeConfigError


def class_one_hot(labels: Tensor, dtype: torch.dtype) -> Tensor:
    """``[*, examples] -> [*, examples, ways]`` one-hot labels; every label ``0 .. ways-1`` must occur.

    Raises:
        EpisodeConfigError: float targets (a regression episode) or a label with no example.
    """
    if labels.is_floating_point():
        raise EpisodeConfigError(
            f"this learner classifies, but the support targets are {labels.dtype} (a regression task); "
            "use integer labels 0 .. ways-1 or a learner that regresses (e.g. MAML)"
        )
    one_hot = F.one_hot(labels, int(labels.max()) + 1)
    missing = (one_hot.sum(-2) == 0).nonzero()
    if len(missing):
        raise EpisodeConfigError(
            f"labels must be 0 .. ways-1 with at least one support example each; label {int(missing[0, -1])} has none"
        )
    return one_hot.to(dtype)


class Temperature(nn.Module):
    """Divides scores by a temperature, fixed or learned.

    A learned temperature is stored as its logarithm so it stays positive.

    Args:
        value: the (initial) temperature.
        learnable: learn it with the other parameters.
    """

    def __init__(self, value: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        if value <= 0:
            raise ValueError(f"temperature={value}: it must be positive")
        log_value = torch.tensor(math.log(value))
        if learnable:
            self.log_value = nn.Parameter(log_value)
        else:
            self.register_buffer("log_value", log_value)

    @property
    def value(self) -> Tensor:
        return self.log_value.exp()

    def forward(self, scores: Tensor) -> Tensor:
        return scores * torch.exp(-self.log_value)
