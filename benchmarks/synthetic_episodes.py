"""Random meta-batches shaped like Omniglot 5-way 1-shot 15-query, for timing steps without data loading."""

from __future__ import annotations

import torch

from lit_meta.data.episode import EpisodeBatch


def omniglot_like_batch(tasks: int, ways: int = 5, queries: int = 15) -> EpisodeBatch:
    """``tasks`` episodes of random 1x28x28 images: one support image per class, ``queries`` per class to label."""
    return EpisodeBatch(
        support_x=torch.rand(tasks, ways, 1, 28, 28),
        support_y=torch.arange(ways).expand(tasks, -1).contiguous(),
        query_x=torch.rand(tasks, ways * queries, 1, 28, 28),
        query_y=torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous(),
        classes=torch.zeros(tasks, ways, dtype=torch.long),
    )
