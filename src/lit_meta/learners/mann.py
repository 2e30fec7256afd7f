"""MANN: an LSTM controller with an external memory written by least-recently-used access.

Santoro, Bartunov, Botvinick, Wierstra & Lillicrap (2016), "Meta-Learning with
Memory-Augmented Neural Networks", ICML, arXiv:1605.06065.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.data.sequence import LabelInput
from lit_meta.learners.sequence import SequenceMetaLearner

WriteGate = Literal["parameter", "controller"]
"""Where the write gate ``sigma(alpha)`` of Eq. 7 comes from: ``"parameter"``, one learned scalar per
head (the paper's "scalar gate parameter"); ``"controller"``, emitted by the controller at every step,
``sigma(W_alpha h_t + b)`` per head (as the public ports: tristandeleu/ntm-one-shot and others)."""

WriteContent = Literal["key", "add"]
"""What a head adds to memory where it writes (Eq. 8): ``"key"``, its read key ``k_t`` (the paper's
equation); ``"add"``, a separate vector ``a_t = tanh(W_a h_t + b)`` (as the public ports, after the NTM)."""


class MemoryState(NamedTuple):
    """What the MANN carries from one step to the next, per task (leading dimension).

    Attributes:
        memory: ``[tasks, slots, width]``, the memory matrix ``M_t``.
        usage: ``[tasks, slots]``, the usage weights ``w^u_t``.
        read_weights: ``[tasks, heads, slots]``, the read weights ``w^r_t`` of each head.
        reads: ``[tasks, heads * width]``, the read vectors ``r_t`` of all heads.
        hidden: ``[tasks, controller]``, the LSTM controller's output ``h_t``.
        cell: ``[tasks, controller]``, its cell state.
    """

    memory: Tensor
    usage: Tensor
    read_weights: Tensor
    reads: Tensor
    hidden: Tensor
    cell: Tensor


class MemoryAccess(NamedTuple):
    """The addressing of one step, for inspection and tests: ``write_weights`` ``[tasks, heads, slots]``,
    the least-used weights ``least_used`` they drew on, and the slot ``cleared`` before writing ``[tasks]``."""

    write_weights: Tensor
    least_used: Tensor
    cleared: Tensor


class LRUAMemoryCell(nn.Module):
    """One step of the MANN: an LSTM controller reading and writing an external memory by LRUA.

    Santoro et al. (2016), Section 3.1-3.2, at step ``t``:

    1. the controller (an LSTM) reads the input ``x_t`` and the previous read vectors ``r_{t-1}``
       ("an additional input for the next controller state") and emits ``h_t``;
    2. each head ``h`` emits a key ``k_t = tanh(W_k h_t)`` (the paper does not name the
       nonlinearity; tanh bounds what is written);
    3. **write** (least recently used access): the write weights interpolate, through a
       sigmoid gate ``sigma(alpha)`` (Eq. 7: a learned scalar per head, or with
       ``write_gate="controller"`` emitted by the controller at each step), between the head's
       previous read weights and the previous least-used weights,
       ``w^w_t = sigma(alpha) w^r_{t-1} + (1 - sigma(alpha)) w^lu_{t-1}``; before writing, the
       least-used slot (smallest ``w^u_{t-1}``) is set to zero; then every head adds **its
       key** where it writes, ``M_t(i) = M_{t-1}(i) + w^w_t(i) k_t`` (Eq. 8: the paper writes
       the key used for reading; ``write_content="add"`` writes a separate vector instead, as the
       public ports do);
    4. **read**: each head's read weights are a softmax over slots of the cosine similarity
       between its key and each memory row (Eq. 2-3), ``r_t = sum_i w^r_t(i) M_t(i)`` (Eq. 4);
    5. the usage weights decay by ``gamma`` and add this step's reads and writes,
       ``w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t`` (Eq. 5, summed over heads). They are not a
       distribution: they sum to about ``2 heads / (1 - gamma)`` once steady.

    The least-used weights follow Eq. 6 with ``n`` the number of reads (heads): the ``n``
    least-used slots. Eq. 6 gives every head all ``n`` of them; here head ``h`` takes the
    ``h``-th least used, so each head's write weights are a distribution and the heads write
    to different slots (as the public ports do). The paper does not give ``gamma``; 0.95 is the
    default (the value of the Theano port tristandeleu/ntm-one-shot; others use 0.99).

    The initial state (every episode, every task) is an empty memory, zero usage, zero read
    vectors and controller state, and head ``h`` "previously read" slot ``h``, so the first
    write of head ``h`` goes wholly to slot ``h``.

    Args:
        input_size: features of ``x_t`` (item embedding and label channel).
        controller_size: LSTM units (200 in the paper).
        slots: memory rows (128).
        width: memory columns, the key size (40).
        heads: read heads, each with its own key and write (4).
        usage_decay: ``gamma`` of the usage weights.
        write_gate: where ``sigma(alpha)`` comes from (:data:`WriteGate`).
        write_content: what a head writes (:data:`WriteContent`).
    """

    def __init__(
        self,
        input_size: int,
        controller_size: int = 200,
        slots: int = 128,
        width: int = 40,
        heads: int = 4,
        usage_decay: float = 0.95,
        write_gate: WriteGate = "parameter",
        write_content: WriteContent = "key",
    ) -> None:
        super().__init__()
        if write_gate not in ("parameter", "controller"):
            raise ValueError(f"write_gate={write_gate!r}: expected 'parameter' or 'controller'")
        if write_content not in ("key", "add"):
            raise ValueError(f"write_content={write_content!r}: expected 'key' or 'add'")
        if heads > slots:
            raise ValueError(f"heads={heads} but slots={slots}: every head needs its own least-used slot")
        if not 0.0 <= usage_decay <= 1.0:
            raise ValueError(f"usage_decay={usage_decay}: gamma must lie in [0, 1]")
        self.slots, self.width, self.heads, self.usage_decay = slots, width, heads, usage_decay
        self.controller = nn.LSTMCell(input_size + heads * width, controller_size)
        self.key = nn.Linear(controller_size, heads * width)
        self.write_gate, self.write_content = write_gate, write_content
        if write_gate == "parameter":
            self.gate = nn.Parameter(torch.zeros(heads))  # alpha of Eq. 7, one scalar per head
        else:
            self.gate = nn.Linear(controller_size, heads)  # alpha_t of each head, from h_t
        self.add = nn.Linear(controller_size, heads * width) if write_content == "add" else None
        self.output_size = controller_size + heads * width

    def initial_state(self, tasks: int, like: Tensor) -> MemoryState:
        """The state at the start of an episode: see the class docstring."""
        zeros = like.new_zeros
        read_weights = F.one_hot(torch.arange(self.heads, device=like.device), self.slots).to(like.dtype)
        return MemoryState(
            memory=zeros(tasks, self.slots, self.width),
            usage=zeros(tasks, self.slots),
            read_weights=read_weights.expand(tasks, -1, -1).contiguous(),
            reads=zeros(tasks, self.heads * self.width),
            hidden=zeros(tasks, self.controller.hidden_size),
            cell=zeros(tasks, self.controller.hidden_size),
        )

    def forward(self, x: Tensor, state: MemoryState) -> tuple[Tensor, MemoryState, MemoryAccess]:
        """One step: ``x`` ``[tasks, input_size]`` -> the features ``[h_t; r_t]`` ``[tasks, output_size]``,
        the next state, and the write addressing."""
        hidden, cell = self.controller(torch.cat([x, state.reads], dim=-1), (state.hidden, state.cell))
        keys = torch.tanh(self.key(hidden)).view(-1, self.heads, self.width)
        order = torch.argsort(state.usage, dim=-1, stable=True)  # least used first
        least_used = F.one_hot(order[:, : self.heads], self.slots).to(x.dtype)  # [tasks, heads, slots]
        alpha = self.gate.view(1, -1) if self.write_gate == "parameter" else self.gate(hidden)
        gate = torch.sigmoid(alpha).unsqueeze(-1)  # [1 or tasks, heads, 1]
        write_weights = gate * state.read_weights + (1 - gate) * least_used
        written = keys if self.add is None else torch.tanh(self.add(hidden)).view(-1, self.heads, self.width)
        cleared = order[:, 0]
        memory = state.memory * (1 - F.one_hot(cleared, self.slots).to(x.dtype)).unsqueeze(-1)
        memory = memory + write_weights.transpose(1, 2) @ written
        similarity = F.cosine_similarity(keys.unsqueeze(2), memory.unsqueeze(1), dim=-1, eps=1e-8)
        read_weights = similarity.softmax(dim=-1)  # [tasks, heads, slots]
        reads = (read_weights @ memory).flatten(1)
        usage = self.usage_decay * state.usage + read_weights.sum(1) + write_weights.sum(1)
        next_state = MemoryState(memory, usage, read_weights, reads, hidden, cell)
        return torch.cat([hidden, reads], dim=-1), next_state, MemoryAccess(write_weights, least_used, cleared)


class MANN(SequenceMetaLearner):
    """Memory-augmented neural network (Santoro et al., 2016) on the sequence family.

    An episode is a sequence: step ``t`` feeds the item ``x_t`` (its backbone embedding; the
    paper feeds the raw 20x20 pixels, ``backbone: torch.nn.Flatten``) with the one-hot label
    of step ``t - 1`` (labels offset by one, Section 4.1), and the output at step ``t``
    predicts the label of ``x_t`` before it is given. The memory and controller start empty
    every episode (:meth:`LRUAMemoryCell.initial_state`). Training minimises the
    cross-entropy at every support step and at the query steps; validation and test report
    the accuracy at each presentation of a class (``acc_instance_1`` ... ``_10``, Table 1) as
    well as the usual query accuracy. A query is one more step after the support (carrying
    the last support label, as the offset sequence would), read from the state after the
    support: queries never see each other.

    The episodes need ``support_order="random"`` (the paper shuffles the samples of an
    episode; labels are shuffled per episode by the sampler). Paper setup (Section 4.1):
    Omniglot, 1,200 training characters, 20x20 images, 5 classes and 10 samples each per
    episode (``ways=5, shots=10``), memory 128 x 40, 4 read heads, a 200-unit LSTM
    controller, 100,000 episodes (the paper's batch size and optimiser are in the configs).

    The defaults follow the letter of Eq. 7-8: a learned scalar write gate per head, and each
    head writes its read key. The public ports emit the gate from the controller at every step
    and write a separate add vector (``write_gate="controller", write_content="add"``); on
    Omniglot that learns faster, and ``configs/mann/omniglot_5w10s.yaml`` uses it (measured in
    ``benchmarks/notes/model_based.md``).

    Args:
        backbone: the item encoder; its output is flattened to ``embedding_dim`` features.
        ways: classes per episode (the label channel and the outputs).
        embedding_dim: features per item out of the backbone (400 for 20x20 raw pixels).
        controller_size: LSTM units.
        memory_slots: memory rows.
        memory_width: memory columns.
        read_heads: read (and write) heads.
        usage_decay: ``gamma`` of the usage weights (Eq. 5).
        write_gate: where the write gate comes from (:data:`WriteGate`; Eq. 7).
        write_content: what a head writes (:data:`WriteContent`; Eq. 8).
        **kwargs: the arguments of :class:`~lit_meta.learners.base.MetaLearner`.
    """

    label_input: ClassVar[LabelInput] = "offset"
    scores_support: ClassVar[bool] = True

    def __init__(
        self,
        backbone: nn.Module,
        ways: int = 5,
        embedding_dim: int = 400,
        controller_size: int = 200,
        memory_slots: int = 128,
        memory_width: int = 40,
        read_heads: int = 4,
        usage_decay: float = 0.95,
        write_gate: WriteGate = "parameter",
        write_content: WriteContent = "key",
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, ways=ways, **kwargs)
        self.embedding_dim = embedding_dim
        self.cell = LRUAMemoryCell(
            embedding_dim + ways, controller_size, memory_slots, memory_width, read_heads, usage_decay,
            write_gate, write_content,
        )  # fmt: skip
        self.classifier = nn.Linear(self.cell.output_size, ways)

    def run(self, sequence: Tensor) -> tuple[Tensor, MemoryState, list[MemoryAccess]]:
        """Reads ``sequence`` ``[tasks, steps, features]`` from the initial state: the logits
        ``[tasks, steps, ways]``, the final state and each step's write addressing."""
        state = self.cell.initial_state(sequence.shape[0], sequence)
        features, accesses = [], []
        for step in sequence.unbind(1):
            out, state, access = self.cell(step, state)
            features.append(out)
            accesses.append(access)
        return self.classifier(torch.stack(features, dim=1)), state, accesses

    def read_support(self, sequence: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits, state, _ = self.run(sequence)
        return logits, state._asdict()

    def read_queries(self, queries: Tensor, **state: Tensor) -> Tensor:
        tasks, count = queries.shape[:2]
        branched = MemoryState(**{name: value.repeat_interleave(count, dim=0) for name, value in state.items()})
        out, _, _ = self.cell(queries.flatten(0, 1), branched)
        return self.classifier(out).view(tasks, count, -1)
