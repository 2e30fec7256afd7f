"""Episodic metrics: a mean over episodes with its 95% confidence interval."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

# Two-sided 95% quantile of the normal distribution. With the hundreds of
# episodes used for evaluation (600 by convention), Student's t is the same to
# three digits; the few-shot literature reports 1.96 * std / sqrt(n).
Z_95 = 1.959963984540054


class EpisodeMeanCI(Metric):
    """Mean of a per-episode score and the half-width of its 95% confidence interval.

    ``update`` takes one value per episode (e.g. the query accuracy of each task
    of a meta-batch); ``compute`` returns ``{"mean": m, "ci95": 1.96 * s / sqrt(n), "count": n}``
    with ``s`` the sample standard deviation over all episodes seen, synced
    across processes under DDP (sums of values, squares and counts are reduced).
    With fewer than two episodes the interval is undefined: ``ci95`` is NaN.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        values = values.detach().to(torch.float64).reshape(-1)
        self.total += values.sum()
        self.total_sq += values.square().sum()
        self.count += values.numel()

    def compute(self) -> dict[str, Tensor]:
        n = self.count.to(torch.float64)
        mean = self.total / n.clamp(min=1)
        var = (self.total_sq - n * mean.square()) / (n - 1).clamp(min=1)
        ci = Z_95 * var.clamp(min=0).sqrt() / n.clamp(min=1).sqrt()
        ci = torch.where(n < 2, torch.full_like(ci, float("nan")), ci)  # no spread from one value
        return {"mean": mean.float(), "ci95": ci.float(), "count": self.count.clone()}


def format_mean_ci(mean: float, ci95: float, episodes: int, percent: bool = True) -> str:
    """``"98.70 ± 0.21 (95% CI over 600 episodes)"``; ``"98.70 (95% CI n/a: 1 episode)"`` when the interval is
    undefined (fewer than two episodes)."""
    scale = 100.0 if percent else 1.0
    if not math.isfinite(mean):
        return "n/a"
    if episodes < 2 or not math.isfinite(ci95):
        return f"{mean * scale:.2f} (95% CI n/a: {episodes} episode{'' if episodes == 1 else 's'})"
    return f"{mean * scale:.2f} ± {ci95 * scale:.2f} (95% CI over {episodes} episodes)"
