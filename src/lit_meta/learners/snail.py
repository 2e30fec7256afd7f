"""SNAIL: temporal convolutions and causal attention over an episode read as a sequence.

The torch part (:class:`DenseBlock`, :class:`TCBlock`, :class:`AttentionBlock`, and
:class:`SNAILSequenceModel`, the few-shot architecture built from them) is plain
``nn.Module`` code on ``[batch, steps, features]`` sequences; :class:`SNAIL` is the learner
on the sequence family's base.

Every block is causal and returns its input with new features concatenated after it
(Mishra et al., 2018, Section 3.1, Figure 2). So the input of any block, at any step, is
a prefix of the features the last block returns there, and the state after a support
sequence is that last representation of every support step (plus the attention blocks'
keys and values, so they are not computed again): from it, each block computes the
step that follows the support exactly as it would inside the longer sequence
(:meth:`SNAILSequenceModel.step`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.data.sampler import EpisodeShape
from lit_meta.data.sequence import LabelInput
from lit_meta.errors import EpisodeConfigError
from lit_meta.learners.sequence import SequenceMetaLearner

PAPER_ATTENTION_SIZES: tuple[tuple[int, int], ...] = ((64, 32), (256, 128), (512, 256))
"""``(key size, value size)`` of the three attention blocks of the few-shot SNAIL (Mishra et al., 2018, Appendix A)."""


class DenseBlock(nn.Module):
    """A gated causal convolution whose output is concatenated to its input (Mishra et al., 2018, Section 3.1).

    ``xf, xg = CausalConv(x, R, D), CausalConv(x, R, D)``; the block returns
    ``concat(x, tanh(xf) * sigmoid(xg))``. The convolutions have kernel size 2 (as in all
    the paper's experiments): step ``t`` reads steps ``t - R`` and ``t``, zeros before the
    sequence. ``xf`` and ``xg`` are the two halves of one convolution with ``2 * D`` filters.

    Args:
        in_features: features of every input step.
        dilation: R, how many steps back the convolution's first tap reads.
        filters: D, the features the block adds.
    """

    def __init__(self, in_features: int, dilation: int, filters: int) -> None:
        super().__init__()
        if dilation < 1 or filters < 1:
            raise ValueError(f"dilation={dilation}, filters={filters}: both must be at least 1")
        self.in_features = in_features
        self.dilation = dilation
        self.out_features = in_features + filters
        self.conv = nn.Conv1d(in_features, 2 * filters, kernel_size=2, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        """``[batch, steps, in_features] -> [batch, steps, in_features + filters]``."""
        padded = F.pad(x.transpose(1, 2), (self.dilation, 0))
        return self._gated(x, self.conv(padded).transpose(1, 2))

    def step(self, x: Tensor, past: Tensor) -> Tensor:
        """The output at step ``T`` of inputs ``x`` ``[batch, queries, in_features]``, each a continuation of
        ``past`` ``[batch, T, >= in_features]``, the block's inputs at steps ``0 .. T-1`` (extra features ignored).
        """
        weight, bias = self.conv.weight, self.conv.bias
        pre = F.linear(x, weight[..., 1], bias)
        back = past.shape[1] - self.dilation
        if back >= 0:
            pre = pre + F.linear(past[:, back, : self.in_features], weight[..., 0]).unsqueeze(1)
        return self._gated(x, pre)

    @staticmethod
    def _gated(x: Tensor, pre: Tensor) -> Tensor:
        xf, xg = pre.chunk(2, dim=-1)
        return torch.cat([x, torch.tanh(xf) * torch.sigmoid(xg)], dim=-1)


def tc_dilations(sequence_length: int) -> list[int]:
    """The dilations of a TC block for sequences of ``sequence_length`` steps: ``2^i`` for ``i = 1 .. ceil(log2 T)``.

    As the paper's pseudocode (Mishra et al., 2018, Section 3.1, TCBlock). Its receptive
    field, ``2^(ceil(log2 T) + 1) - 1`` steps, exceeds T; since every dilation is even,
    the convolutions alone read only even offsets back (the attention blocks read every step).
    """
    if sequence_length < 1:
        raise ValueError(f"sequence_length={sequence_length}: a sequence has at least one step")
    return [2**i for i in range(1, math.ceil(math.log2(sequence_length)) + 1)]


class TCBlock(nn.Module):
    """Dense blocks with exponentially growing dilations (Mishra et al., 2018, Section 3.1).

    Args:
        in_features: features of every input step.
        sequence_length: T, the longest sequence the block is sized for (:func:`tc_dilations`).
        filters: D, the features each dense block adds.
    """

    def __init__(self, in_features: int, sequence_length: int, filters: int) -> None:
        super().__init__()
        blocks = []
        for dilation in tc_dilations(sequence_length):
            blocks.append(DenseBlock(in_features, dilation, filters))
            in_features = blocks[-1].out_features
        self.blocks = nn.ModuleList(blocks)
        self.out_features = in_features

    def forward(self, x: Tensor) -> Tensor:
        """``[batch, steps, in_features] -> [batch, steps, out_features]``."""
        for block in self.blocks:
            x = block(x)
        return x

    def step(self, x: Tensor, past: Tensor) -> Tensor:
        """The output at step ``T`` of inputs ``x`` following ``past``, ``[batch, T, >= out_features]``: the block's
        outputs at steps ``0 .. T-1``, which begin with every dense block's inputs (see :meth:`DenseBlock.step`)."""
        for block in self.blocks:
            x = block.step(x, past)
        return x


class AttentionBlock(nn.Module):
    """Causal soft attention whose read is concatenated to its input (Mishra et al., 2018, Section 3.1).

    Keys, queries and values are affine maps of the input; step ``t`` reads
    ``softmax(q_t k_s^T / sqrt(K)) v_s`` over the steps ``s <= t`` (the causally masked
    softmax); the block returns ``concat(x, read)``.

    Args:
        in_features: features of every input step.
        key_size: K, the size of keys and queries.
        value_size: V, the size of values, so the features the block adds.
    """

    def __init__(self, in_features: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.key_size = key_size
        self.out_features = in_features + value_size
        self.query = nn.Linear(in_features, key_size)
        self.key = nn.Linear(in_features, key_size)
        self.value = nn.Linear(in_features, value_size)

    def memory(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The keys ``[batch, steps, K]`` and values ``[batch, steps, V]`` of input steps ``x``."""
        return self.key(x), self.value(x)

    def forward(self, x: Tensor, memory: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``[batch, steps, in_features] -> [batch, steps, in_features + V]``; ``memory``: ``x``'s, if computed."""
        keys, values = memory if memory is not None else self.memory(x)
        read = F.scaled_dot_product_attention(self.query(x), keys, values, is_causal=True)
        return torch.cat([x, read], dim=-1)

    def step(self, x: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """The output at step ``T`` of inputs ``x`` ``[batch, queries, in_features]``: each query step attends to
        the ``T`` earlier steps' ``keys`` and ``values`` (:meth:`memory`) and to itself, never to another query."""
        query = self.query(x)
        own_key, own_value = self.memory(x)
        logits = torch.cat([query @ keys.transpose(1, 2), (query * own_key).sum(-1, keepdim=True)], dim=-1)
        probs = torch.softmax(logits / math.sqrt(self.key_size), dim=-1)
        read = probs[..., :-1] @ values + probs[..., -1:] * own_value
        return torch.cat([x, read], dim=-1)


class SNAILSequenceModel(nn.Module):
    """The few-shot SNAIL: attention and TC blocks interleaved, then a per-step linear map to the outputs.

    ``AttentionBlock(64, 32), TCBlock(T, 128), AttentionBlock(256, 128), TCBlock(T, 128),
    AttentionBlock(512, 256)``, then a 1x1 convolution with ``out_features`` channels (a linear
    map applied at every step), as Mishra et al. (2018), Appendix A, for N-way K-shot
    classification with ``T = N K + 1`` and ``out_features = N``. One TC block of
    ``filters`` per dense block sits between each two attention blocks of ``attention_sizes``.

    Args:
        in_features: features of every input step (an item's embedding and its label channel).
        out_features: outputs at every step (the ways).
        sequence_length: T, the longest sequence the TC blocks are sized for.
        filters: the features each dense block adds.
        attention_sizes: ``(key size, value size)`` of each attention block, in order.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        sequence_length: int,
        filters: int = 128,
        attention_sizes: Sequence[tuple[int, int]] = PAPER_ATTENTION_SIZES,
    ) -> None:
        super().__init__()
        if not attention_sizes:
            raise ValueError("attention_sizes is empty: SNAIL needs at least one attention block")
        self.in_features = in_features
        blocks: list[AttentionBlock | TCBlock] = []
        features = in_features
        for i, (key_size, value_size) in enumerate(attention_sizes):
            if i:
                blocks.append(TCBlock(features, sequence_length, filters))
                features = blocks[-1].out_features
            blocks.append(AttentionBlock(features, key_size, value_size))
            features = blocks[-1].out_features
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(features, out_features)

    def forward(self, sequence: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Outputs ``[batch, T, out_features]`` of sequences ``[batch, T, in_features]``, and the state after them.

        The state (for :meth:`step`) holds ``"sequence"``, the last block's features at every
        step, and the keys and values of each attention block, ``"keys_{i}"`` and ``"values_{i}"``.
        """
        state: dict[str, Tensor] = {}
        x = sequence
        for i, block in enumerate(self.blocks):
            if isinstance(block, AttentionBlock):
                state[f"keys_{i}"], state[f"values_{i}"] = memory = block.memory(x)
                x = block(x, memory)
            else:
                x = block(x)
        state["sequence"] = x
        return self.head(x), state

    def step(self, steps: Tensor, state: Mapping[str, Tensor]) -> Tensor:
        """Outputs ``[batch, queries, out_features]`` of ``steps`` ``[batch, queries, in_features]``, each the step
        right after the sequence whose ``state`` :meth:`forward` returned, read as if appended to it alone."""
        x = steps
        for i, block in enumerate(self.blocks):
            if isinstance(block, AttentionBlock):
                x = block.step(x, state[f"keys_{i}"], state[f"values_{i}"])
            else:
                x = block.step(x, state["sequence"])
        return self.head(x)


class SNAIL(SequenceMetaLearner):
    """SNAIL (Mishra, Rohaninejad, Chen & Abbeel, 2018, "A Simple Neural Attentive Meta-Learner", ICLR,
    arXiv:1707.03141).

    An N-way K-shot episode is read as a sequence: the ``N K`` support items, each its
    embedding joined with its one-hot label, in the episode's (random) order, then an
    unlabelled query, its label channel zeros (Section 3, Section 5.1). A
    :class:`SNAILSequenceModel` reads it, and its output at the query's step ``T = N K + 1``
    is the query's class scores; the loss is their cross-entropy, at the query steps only.
    Each query of an episode is its own last step after the same support sequence, so the
    support is read once and the queries never see one another (:meth:`SNAILSequenceModel.step`).
    The embedding network and the SNAIL are trained end to end.

    The support order matters: train and evaluate with
    ``EpisodicDataModule(support_order="random")``, as the paper feeds the support "in a
    random order"; in the default class-major order the position of an item gives its label away.

    Paper setup (Section 5.1, Appendix A): Omniglot with the 64-filter four-block embedding
    (``Conv4(1, out_features=None)``, 64 features), the architecture of
    :class:`SNAILSequenceModel` with ``filters=128``, Adam. One model per number of ways,
    trained on episodes whose shots are drawn uniformly from 1 to 5, so sized for
    ``T = 5 N + 1`` (``max_shots=5``). Omniglot 5-way 99.07% (1-shot) and 99.78% (5-shot),
    20-way 97.64% and 99.36% (Table 1). Appendix A's further details (the embedding's
    activation, the learning rate, batch size and iterations) were not checked for this
    implementation; the configs under ``configs/snail/`` say what they use.

    Args:
        backbone: the embedding network; its output is flattened to one vector per item.
        ways: N, the classes of every episode: the size of the label channel and of the outputs.
        max_shots: the most support items per class the learner reads: the TC blocks are sized for
            sequences of ``T = ways * max_shots + 1`` steps (5, the paper's, by default). Episodes with
            more shots are refused; fewer are read as they are, the convolutions reading zeros
            before the sequence. (Not ``shots``: that name is the datamodule's, and the two differ.)
        embedding_dim: the size of the backbone's (flattened) output; by default its
            ``out_features``, or ``embedding_dim`` when that is ``None`` (as
            :class:`~lit_meta.backbones.Conv4` without a head).
        filters: the features each dense block adds (128 in the paper).
        attention_sizes: ``(key size, value size)`` of each attention block; a TC block sits
            between each two.
        **kwargs: the outer-loop options of :class:`~lit_meta.learners.base.MetaLearner`
            (``meta_lr``, ``meta_optimizer``, ``weight_decay``, ``lr_schedule``, ...).
    """

    label_input: ClassVar[LabelInput] = "masked"
    scores_support: ClassVar[bool] = False

    def __init__(
        self,
        backbone: nn.Module,
        ways: int = 5,
        max_shots: int = 5,
        embedding_dim: int | None = None,
        filters: int = 128,
        attention_sizes: Sequence[tuple[int, int]] = PAPER_ATTENTION_SIZES,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, ways, **kwargs)
        if max_shots < 1:
            raise ValueError(f"max_shots={max_shots}: the support has at least one item per class")
        dim = embedding_dim or backbone_output_size(backbone)
        if dim is None:
            raise ValueError(
                f"SNAIL needs the size of the backbone's output: pass embedding_dim=... "
                f"({type(backbone).__name__} has neither out_features nor embedding_dim)"
            )
        self.max_shots = max_shots
        self.embedding_dim = dim
        self.sequence_length = ways * max_shots + 1
        self.network = SNAILSequenceModel(dim + ways, ways, self.sequence_length, filters, attention_sizes)

    def read_support(self, sequence: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.network(sequence)

    def read_queries(self, queries: Tensor, **state: Tensor) -> Tensor:
        return self.network.step(queries, state)

    def check_episode_shapes(self, shapes: Mapping[str, EpisodeShape]) -> None:
        """The base's checks, and that every split's support fits the sequence length the TC blocks are sized for."""
        super().check_episode_shapes(shapes)
        for split, shape in shapes.items():
            if shape.ways * shape.shots + 1 > self.sequence_length:
                raise EpisodeConfigError(
                    f"the {split} episodes are {shape.shots}-shot, so {shape.ways * shape.shots + 1} steps long, but "
                    f"SNAIL(ways={self.ways}, max_shots={self.max_shots}) is sized for {self.sequence_length} steps; "
                    f"set the learner's max_shots to {shape.shots} or the datamodule's shots to {self.max_shots}"
                )


def backbone_output_size(backbone: nn.Module) -> int | None:
    """A backbone's output size when it states one: ``out_features``, or ``embedding_dim`` without a head."""
    size = getattr(backbone, "out_features", None)
    return size if isinstance(size, int) else getattr(backbone, "embedding_dim", None)
