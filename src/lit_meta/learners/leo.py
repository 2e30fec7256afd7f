"""Latent Embedding Optimization (LEO): gradient-based adaptation in a learned latent space of classifiers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from lit_meta.data.episode import EpisodeBatch
from lit_meta.learners.base import ClassScores, MetaLearner
from lit_meta.learners.classification import class_one_hot
from lit_meta.learners.embedding import check_embedding_dim, embed, embed_episode
from lit_meta.learners.leo_model import LEONetwork


class LEO(MetaLearner):
    """Latent Embedding Optimization (Rusu et al., 2019, "Meta-Learning with Latent Embedding
    Optimization", ICLR, arXiv:1807.05960).

    A task's classifier is ``logits = x @ W^T`` over the backbone's embeddings ``x``, one
    weight vector per class and no bias. :class:`~lit_meta.learners.leo_model.LEONetwork`
    generates ``W`` from the support set: an encoder and a relation network over every pair of
    support examples give a Gaussian over a ``num_latents``-d code per class (Section 2.3,
    Eq. 4-5), a decoder maps codes to a Gaussian over the class's weights; ``inner_steps``
    gradient steps on the codes of the support loss, decoding again after each step, then
    ``finetuning_steps`` steps on the decoded weights themselves, both with learned
    per-dimension step sizes (Algorithm 1). Meta-training backpropagates through both inner
    loops (second order) and minimises, over the tasks of a meta-batch, the mean of

        query cross-entropy + ``kl_weight`` * KL(q(z | support) || N(0, I))
        + ``encoder_penalty_weight`` * mean((z - stopgrad(z'))^2)

    plus, once per step, ``l2_penalty_weight`` * sum(w^2) / 2 over the encoder, relation
    and decoder weights and ``orthogonality_penalty_weight`` * the mean squared difference
    between the correlation matrix of the decoder's rows and the identity (``z`` the sampled
    initial codes, ``z'`` the adapted ones; the KL is the one-sample estimate the authors'
    code (deepmind/leo, ``model.py``) takes).

    Training samples codes and weights and applies dropout; evaluation (``eval()``, as
    Lightning sets for validation and test) uses the means and no dropout, as the code does
    at meta-test, so :meth:`adapt` is deterministic. Adaptation takes gradients, so the base
    leaves Lightning's inference mode for it; the class scores are the learner's own, for any
    number of ways.

    The paper meta-trains on fixed 640-d features of a WRN-28-10 pre-trained on the
    meta-train classes (with ``backbone=nn.Identity()`` on a dataset of such features); any
    embedding network also works and is then meta-trained end to end through the same loss.
    Embeddings are scaled to unit L2 norm first (``normalize_embeddings``), as the code's data
    provider (``data.py``) does: the default step sizes assume it (unnormalised Conv4 features
    make the latent steps diverge at initialisation).

    Meta-gradients are clipped as in the authors' ``runner.py``: each element to
    ``[-gradient_threshold, gradient_threshold]``, then each parameter tensor to an L2 norm of
    at most ``gradient_norm_threshold`` (``tf.clip_by_norm`` per tensor, not a global norm), in
    :meth:`configure_gradient_clipping`; a Trainer's ``gradient_clip_val`` applies after them.

    Deviations from the code: one code and one weight vector per class (the paper's ``z_n``),
    where the code keeps one per support example and averages their logits (the same at
    evaluation; in training one sample per class where the code averages one per shot); both
    inner loops descend the summed support cross-entropy divided by the shots, which gives the
    code's steps for its step sizes (:meth:`~lit_meta.learners.leo_model.LEONetwork.adapt_task`);
    a non-finite inner loss raises :class:`~lit_meta.errors.NonFiniteLossError` where the code
    silently replaces the step's gradient by that of the L2 penalty; the L2 penalty covers LEO's
    networks, not the backbone (use ``weight_decay`` for it).

    Paper results (Table 1, 5-way, WRN-28-10 features pre-trained and meta-trained on the
    meta-train and meta-validation classes): miniImageNet 61.76% (1-shot) and 77.59% (5-shot),
    tieredImageNet 66.33% and 81.44%.

    Args:
        backbone: an embedding network ``[N, *item_shape] -> [N, embedding_dim]``, or
            ``nn.Identity()`` when the dataset serves embeddings.
        embedding_dim: size of the backbone's embeddings; checked on every batch.
        num_latents: size of a class's latent code (64 in the paper).
        inner_lr_init: initial step size of the latent inner loop, one learned per latent dimension.
        finetuning_lr_init: initial step size of the fine-tuning loop, one learned per embedding dimension.
        inner_steps: gradient steps on the latent codes.
        finetuning_steps: gradient steps on the decoded weights.
        dropout_rate: dropout on the embeddings in training, before the encoder and every logit.
        kl_weight: beta, weight of the KL term.
        encoder_penalty_weight: gamma, weight of the encoder penalty.
        l2_penalty_weight: lambda_1, weight of the L2 penalty on LEO's networks.
        orthogonality_penalty_weight: lambda_2, weight of the decoder's orthogonality penalty.
        gradient_threshold: clip every meta-gradient element to ``[-t, t]``; 0 turns it off.
        gradient_norm_threshold: then clip every parameter's meta-gradient to an L2 norm of at most
            this; 0 turns it off.
        normalize_embeddings: scale every embedding to unit L2 norm before LEO sees it, as the authors'
            data provider does (``data.py``); the default inner step sizes assume it.
        **kwargs: the outer-loop options of :class:`~lit_meta.learners.base.MetaLearner`
            (``meta_lr``: the code's ``outer_lr`` is 1e-4; ``meta_optimizer``, ``lr_schedule``, ...).

    Raises:
        ValueError: a size, step count, rate, weight or threshold out of range.
    """

    evaluation_needs_autograd: ClassVar[bool] = True
    class_scores: ClassVar[ClassScores] = "learner"

    def __init__(
        self,
        backbone: nn.Module,
        embedding_dim: int,
        num_latents: int = 64,
        inner_lr_init: float = 1.0,
        finetuning_lr_init: float = 0.001,
        inner_steps: int = 5,
        finetuning_steps: int = 5,
        dropout_rate: float = 0.5,
        kl_weight: float = 1e-3,
        encoder_penalty_weight: float = 1e-9,
        l2_penalty_weight: float = 1e-8,
        orthogonality_penalty_weight: float = 1e-3,
        gradient_threshold: float = 0.1,
        gradient_norm_threshold: float = 0.1,
        normalize_embeddings: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        if inner_steps < 0 or finetuning_steps < 0:
            raise ValueError(f"inner_steps={inner_steps}, finetuning_steps={finetuning_steps}: use 0 or more steps")
        weights = {
            "kl_weight": kl_weight,
            "encoder_penalty_weight": encoder_penalty_weight,
            "l2_penalty_weight": l2_penalty_weight,
            "orthogonality_penalty_weight": orthogonality_penalty_weight,
            "gradient_threshold": gradient_threshold,
            "gradient_norm_threshold": gradient_norm_threshold,
        }
        negative = {name: value for name, value in weights.items() if value < 0}
        if negative:
            raise ValueError(f"{negative}: penalty weights and clipping thresholds must be >= 0 (0 turns one off)")
        self.network = LEONetwork(embedding_dim, num_latents, inner_lr_init, finetuning_lr_init, dropout_rate)

    # -- adaptation ------------------------------------------------------------------------------
    def adaptation_steps(self) -> int:
        """The latent steps :meth:`adapt` takes by default (``inner_steps``); fine-tuning adds ``finetuning_steps``."""
        return self.hparams.inner_steps

    @torch.no_grad()
    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> LinearTaskClassifier:
        """The task's classifier from its support set; the learner's weights are untouched.

        Call ``eval()`` first, as for any inference: the means are used and dropout is off
        (in training mode codes and weights are sampled). The inner loops still take their
        gradients (:func:`~lit_meta.functional.adapt` enables grad for them).

        Args:
            support_x: the support items ``[examples, *item_shape]``.
            support_y: their labels ``0 .. ways-1``, every class present.
            steps: latent steps, default ``inner_steps``; fine-tuning takes ``finetuning_steps``.
        """
        self.require_class_labels(support_y)
        support = self.embed(support_x, batch_dims=1)
        adapted = self.network.adapt_task(
            support,
            support_y,
            class_one_hot(support_y, support.dtype),
            self.task_loss,
            inner_steps=self.adaptation_steps() if steps is None else steps,
            finetuning_steps=self.hparams.finetuning_steps,
        )
        return LinearTaskClassifier(self, adapted.weights)

    def embed(self, x: Tensor, batch_dims: int) -> Tensor:
        """The backbone's embeddings of items with ``batch_dims`` leading dimensions, their size checked."""
        return self.prepare_embeddings(embed(self.backbone, x, batch_dims), batch_dims)

    def prepare_embeddings(self, embeddings: Tensor, batch_dims: int) -> Tensor:
        """``embeddings``, checked to be ``[*lead, embedding_dim]``, L2-normalised if ``normalize_embeddings``.

        Raises:
            EpisodeConfigError: the backbone's outputs have another shape.
        """
        check_embedding_dim(embeddings, self.hparams.embedding_dim, type(self).__name__, batch_dims)
        return F.normalize(embeddings, dim=-1) if self.hparams.normalize_embeddings else embeddings

    # -- meta-training ---------------------------------------------------------------------------
    def meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """The mean over tasks of the query cross-entropy, KL and encoder penalty, plus the weight penalties."""
        hp = self.hparams
        self.require_class_labels(batch.support_y)
        support, query = embed_episode(self.backbone, batch.support_x, batch.query_x, batch_dims=2)
        support, query = self.prepare_embeddings(support, 2), self.prepare_embeddings(query, 2)
        task_losses = []
        for task in range(len(batch)):
            adapted = self.network.adapt_task(
                support[task],
                batch.support_y[task],
                class_one_hot(batch.support_y[task], support.dtype),
                self.task_loss,
                inner_steps=hp.inner_steps,
                finetuning_steps=hp.finetuning_steps,
            )
            query_loss = self.task_loss(self.network.logits(query[task], adapted.weights), batch.query_y[task])
            task_losses.append(
                query_loss + hp.kl_weight * adapted.kl + hp.encoder_penalty_weight * adapted.encoder_penalty
            )
        return (
            torch.stack(task_losses).mean()
            + hp.l2_penalty_weight * self.network.l2_penalty()
            + hp.orthogonality_penalty_weight * self.network.orthogonality_penalty()
        )

    def learned_step_sizes(self) -> dict[str, Tensor]:
        """The mean of the learned per-dimension step sizes of each inner loop, for monitoring."""
        return {
            "latent/mean": self.network.inner_lr.detach().mean(),
            "finetuning/mean": self.network.finetuning_lr.detach().mean(),
        }

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """LEO's clipping (by value, then each tensor by norm), then the Trainer's ``gradient_clip_val`` if set."""
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        clip_by_value_then_norm(parameters, self.hparams.gradient_threshold, self.hparams.gradient_norm_threshold)
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


class LinearTaskClassifier:
    """LEO's task model: the learner's backbone, then the adapted classifier ``x @ W^T``.

    Args:
        learner: the learner whose backbone embeds the queries.
        weights: the adapted classifier weights ``[ways, embedding_dim]``.
    """

    def __init__(self, learner: LEO, weights: Tensor) -> None:
        self.learner = learner
        self.weights = weights

    def __call__(self, query_x: Tensor) -> Tensor:
        """``[queries, *item_shape] -> [queries, ways]`` logits."""
        return self.learner.embed(query_x, batch_dims=1) @ self.weights.transpose(0, 1)


@torch.no_grad()
def clip_by_value_then_norm(parameters: Iterable[Tensor], value: float, norm: float) -> None:
    """Clips gradients in place as the LEO authors' ``runner.py`` does: every element to ``[-value, value]``,
    then every tensor ``g`` to ``g * norm / max(|g|, norm)`` (``tf.clip_by_norm``). A threshold of 0 skips its step.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    for grad in grads:
        if value > 0:
            grad.clamp_(-value, value)
        if norm > 0:
            grad.mul_(norm / torch.linalg.vector_norm(grad).clamp(min=norm))
