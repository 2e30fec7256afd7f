"""Embedding the items of an episode, or of a meta-batch of episodes, with one network call.

Shared by every family that embeds items before comparing, sequencing or classifying them,
with the check of the embeddings' size for learners sized for it (:func:`check_embedding_dim`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_meta.errors import EpisodeConfigError


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


def check_embedding_dim(embeddings: Tensor, expected: int, learner_name: str, batch_dims: int) -> Tensor:
    """``embeddings`` ``[*lead, features]`` (``batch_dims`` leading dimensions), checked to have ``expected`` features.

    For learners whose networks are sized by their ``embedding_dim`` argument.

    Raises:
        EpisodeConfigError: outputs that are not flat, or of another size than ``expected``; the message
            names both sizes and the fix.
    """
    shape = list(embeddings.shape[batch_dims:])
    if len(shape) != 1:
        raise EpisodeConfigError(
            f"the backbone gives outputs of shape {shape} per item but {learner_name} needs flat embeddings of "
            f"embedding_dim={expected} features; give a backbone of flat embeddings (e.g. Conv4 with "
            "out_features=null, whose embedding_dim attribute says their size)"
        )
    if shape[0] != expected:
        raise EpisodeConfigError(
            f"the backbone gives {shape[0]} features per item but {learner_name} was built for "
            f"embedding_dim={expected}; set embedding_dim={shape[0]}, or give a backbone without a classification "
            "head (Conv4: out_features=null), or change the image size"
        )
    return embeddings
