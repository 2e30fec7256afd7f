"""Embedding the items of an episode, or of a meta-batch of episodes, with one network call.

Shared by every family that embeds items before comparing or sequencing them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def embed(network: nn.Module, x: Tensor, batch_dims: int) -> Tensor:
    """``network`` applied to items with ``batch_dims`` leading dimensions, in one call.

    ``[*lead, *item_shape] -> [*lead, *output_shape]``: ``lead`` is ``[examples]``
    for one episode and ``[tasks, examples]`` for a meta-batch.
    """
    lead = x.shape[:batch_dims]
    out = network(x.reshape(-1, *x.shape[batch_dims:]))
    return out.reshape(*lead, *out.shape[1:])


def embed_episode(network: nn.Module, support_x: Tensor, query_x: Tensor, batch_dims: int) -> tuple[Tensor, Tensor]:
    """Support and query embeddings from a single call of ``network``.

    One call means BatchNorm in training mode normalises support and query
    (and, for a meta-batch, all its tasks) with the same statistics, as the
    reference implementations that concatenate support and query do.
    """
    dim = batch_dims - 1
    both = embed(network, torch.cat([support_x, query_x], dim=dim), batch_dims)
    return both.split([support_x.shape[dim], query_x.shape[dim]], dim=dim)
