"""Matching Networks, with optional full context embeddings."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.learners.classification import Temperature
from lit_meta.learners.metric import MetricMetaLearner


class MatchingNet(MetricMetaLearner):
    """Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, 2016, NeurIPS, arXiv:1606.04080).

    A query attends to the support examples with a softmax over the cosine
    similarities of their embeddings (divided by ``temperature``, 1 in the
    paper); its prediction is the attention-weighted sum of the support labels'
    one-hot vectors, ``p(c | x) = sum_i a(x, x_i) [y_i = c]`` (Eq. 1).

    Outputs are ``log p(c | x)``, computed as a log-sum-exp of the log-attention
    over each class's support examples (exact, with no ``log(0)``). Since they
    are log-probabilities, ``softmax(outputs) = p`` and the cross-entropy that
    training minimises is the paper's negative log-likelihood.

    ``fce=True`` adds the full context embeddings of the paper's Appendix A.2:

    * support: ``g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i)``, a bidirectional LSTM
      over the support embeddings ``g'`` with a skip connection. The LSTM reads
      the support set in the episode's order, which is fixed: class-major (all
      shots of label 0, then label 1, ...), within a class in sampling order.
      Since episode labels are a random permutation of the classes, the order of
      the classes is random; the class-major structure is not.
    * query: ``f(x, S)``, an LSTM run for ``fce_steps`` steps (K) with the query
      embedding ``f'(x)`` as input at every step. Its hidden state is the
      concatenation ``[h_{k-1}, r_{k-1}]`` (size 2D); ``h_k = h^_k + f'(x)`` where
      ``h^_k`` is the first D outputs of the cell, and ``r_k`` is the read-out
      ``sum_i softmax_i(h_k . g(x_i, S)) g(x_i, S)``. ``f(x, S) = h_K``;
      ``h_0``, ``r_0`` and the cell state start at zero, so ``fce_steps=1``
      reads nothing from the support set. The paper does not report K.

    With FCE predictions depend on the order of the support set; without, they do not.

    Paper setups (Section 4): Conv4 with 64 filters (``Conv4(out_features=None)``),
    Omniglot 28x28 and miniImageNet 84x84, 5- and 20-way episodes with training
    and testing ways equal; Omniglot 5-way 1-shot 98.1% (cosine, no FCE). The
    paper uses FCE on miniImageNet only.

    Args:
        backbone: an embedding network, ``[N, *item_shape] -> [N, D]`` (no head);
            the same network embeds support (``g'``) and query (``f'``) examples.
        fce: full context embeddings.
        fce_steps: read steps K of the query's attention LSTM.
        embedding_dim: D, sizing the FCE LSTMs; defaults to ``backbone.embedding_dim``.
        temperature: the cosine similarities are divided by it before the softmax.
        learn_temperature: learn the temperature.
        **kwargs: the outer-loop options of :class:`MetaLearner` (``meta_lr``,
            ``meta_optimizer``, ``weight_decay``, ``lr_schedule``, ...).
    """

    def __init__(
        self,
        backbone: nn.Module,
        fce: bool = False,
        fce_steps: int = 5,
        embedding_dim: int | None = None,
        temperature: float = 1.0,
        learn_temperature: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        if fce_steps < 1:
            raise ValueError(f"fce_steps={fce_steps}: the attention LSTM takes at least one step")
        self.temperature = Temperature(temperature, learn_temperature)
        self.support_lstm: nn.LSTM | None = None
        self.query_lstm: nn.LSTMCell | None = None
        if fce:
            dim = embedding_dim or getattr(backbone, "embedding_dim", None)
            if dim is None:
                raise ValueError(
                    "fce=True needs the embedding size: pass embedding_dim=... "
                    "(the backbone has no embedding_dim attribute)"
                )
            self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
            self.query_lstm = nn.LSTMCell(dim, 2 * dim)

    def summarize_support(self, support: Tensor, one_hot: Tensor) -> dict[str, Tensor]:
        """``g(x_i, S)`` (:meth:`contextual_support`) and the support labels."""
        return {"support": self.contextual_support(support), "one_hot": one_hot}

    def compare(self, query: Tensor, support: Tensor, one_hot: Tensor) -> Tensor:  # type: ignore[override]
        """Log-probabilities ``[*, queries, ways]`` of query embeddings ``f'(x)`` given ``g(S)`` and its labels."""
        return self.log_probs(self.contextual_query(query, support), support, one_hot)

    def contextual_support(self, support: Tensor) -> Tensor:
        """``g(x_i, S)``: the support embeddings ``[*, shots*ways, D]`` read by the bidirectional LSTM (FCE)."""
        if self.support_lstm is None:
            return support
        items, dim = support.shape[-2:]
        out, _ = self.support_lstm(support.reshape(-1, items, dim))
        forward_and_backward = out.reshape(*support.shape[:-1], 2, dim).sum(-2)
        return forward_and_backward + support

    def contextual_query(self, query: Tensor, support: Tensor) -> Tensor:
        """``f(x, S)``: query embeddings ``[*, queries, D]`` after K attention-LSTM steps over ``g(S)`` (FCE)."""
        if self.query_lstm is None:
            return query
        flat = query.reshape(-1, query.shape[-1])
        state = torch.zeros(flat.shape[0], 2 * flat.shape[1], dtype=flat.dtype, device=flat.device)
        cell = torch.zeros_like(state)
        for _ in range(self.hparams.fce_steps):
            out, cell = self.query_lstm(flat, (state, cell))
            h = out[:, : flat.shape[1]] + flat
            h_by_task = h.reshape(query.shape)
            attention = (h_by_task @ support.transpose(-1, -2)).softmax(-1)
            readout = (attention @ support).reshape(flat.shape)
            state = torch.cat([h, readout], dim=-1)
        return h.reshape(query.shape)

    def log_probs(self, query: Tensor, support: Tensor, one_hot: Tensor) -> Tensor:
        """``log sum_i softmax_i(cos(query, support_i) / T) [y_i = c]``: ``[*, queries, ways]``."""
        similarity = F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(-1, -2)
        log_attention = self.temperature(similarity).log_softmax(-1)
        # log(one_hot) is 0 for the example's class and -inf elsewhere, so the log-sum-exp runs per class.
        log_one_hot = one_hot.to(log_attention.dtype).log()
        return torch.logsumexp(log_attention.unsqueeze(-1) + log_one_hot.unsqueeze(-3), dim=-2)
