"""The networks of Latent Embedding Optimization (LEO) and its two inner loops, in plain torch.

:class:`LEONetwork` maps the embedded support set of a task to the weights of a linear
classifier over embeddings: an encoder and a relation network give a Gaussian over a
low-dimensional latent code per class, a decoder maps codes to a Gaussian over classifier
weights, and two inner loops (on the codes, then on the weights) adapt them to the support
set. The Lightning part, :class:`~lit_meta.learners.leo.LEO`, embeds episodes and adds the
meta-training objective around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal

from lit_meta.functional import adapt

TaskLoss = Callable[[Tensor, Tensor], Tensor]
"""``(logits, labels) -> mean loss`` of one task."""

MIN_STDDEV = 1e-10
"""Floor of every standard deviation, as in the authors' code (``possibly_sample``)."""


@dataclass(frozen=True)
class LatentAdaptation:
    """What :meth:`LEONetwork.adapt_task` returns for one task.

    Attributes:
        weights: the adapted classifier weights ``[ways, embedding_dim]``.
        kl: the KL term of the latent codes (a scalar; 0 when not sampling).
        encoder_penalty: ``mean((z - stopgrad(z'))^2)`` of the initial codes ``z`` and the
            adapted ones ``z'`` (a scalar).
        support_losses: ``[inner_steps + finetuning_steps]``, detached: the support loss before
            each inner step of the two loops.
    """

    weights: Tensor
    kl: Tensor
    encoder_penalty: Tensor
    support_losses: Tensor


class LEONetwork(nn.Module):
    """LEO's encoder, relation network and decoder, and its learned inner step sizes.

    Rusu et al. (2019), "Meta-Learning with Latent Embedding Optimization", ICLR,
    arXiv:1807.05960, Section 2.3 and Algorithm 1, as in the authors' code (deepmind/leo, ``model.py``):

    * encoder ``g_phi_e``: dropout on the support embeddings, then a linear map (no bias) to
      ``num_latents`` (Eq. 4);
    * relation network ``g_phi_r``: a 3-layer ReLU MLP (no biases, ``2 * num_latents`` units
      per layer, linear output) applied to the concatenated codes of every ordered pair of
      support examples of the task, averaged over the partners and then over the shots of
      each class; its output is the mean and the unnormalised standard deviation of a
      Gaussian over the class's code ``z_n`` (Eq. 4-5);
    * decoder ``g_phi_d``: a linear map (no bias) from a code to the mean and unnormalised
      standard deviation of a Gaussian over the class's classifier weights ``w_n`` (Eq. 6);
    * a standard deviation is ``max(exp(s) - 1 + offset, 1e-10)`` from the unnormalised ``s``,
      with ``offset`` 0 for the codes and ``sqrt(2 / (ways + embedding_dim))`` (Glorot's) for
      the weights, as in the code;
    * logits are ``dropout(x) @ W^T`` (no bias, Eq. 3);
    * inner step sizes: one per latent dimension (``inner_lr``) and one per embedding
      dimension (``finetuning_lr``), learned, as in the code.

    In training mode codes and weights are sampled with the reparameterisation trick and
    dropout is on; in eval mode the means are used and dropout is off, as the code does at
    meta-validation and meta-test (``is_meta_training=False``), so adaptation is deterministic.

    Weights start Glorot-uniform, as in the code.

    Args:
        embedding_dim: size of the embeddings ``x`` (and of each class's weight vector).
        num_latents: size of a class's latent code.
        inner_lr_init: initial step size of the latent inner loop.
        finetuning_lr_init: initial step size of the fine-tuning loop.
        dropout_rate: dropout on the embeddings, before the encoder and before every logit.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_latents: int = 64,
        inner_lr_init: float = 1.0,
        finetuning_lr_init: float = 0.001,
        dropout_rate: float = 0.5,
    ) -> None:
        super().__init__()
        if embedding_dim < 1 or num_latents < 1:
            raise ValueError(
                f"embedding_dim={embedding_dim}, num_latents={num_latents}: both must be positive integers"
            )
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate={dropout_rate}: use a probability in [0, 1)")
        self.embedding_dim = embedding_dim
        self.dropout_rate = dropout_rate
        hidden = 2 * num_latents
        self.encoder = nn.Linear(embedding_dim, num_latents, bias=False)
        self.relation = nn.Sequential(
            nn.Linear(hidden, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, hidden, bias=False),
        )
        self.decoder = nn.Linear(num_latents, 2 * embedding_dim, bias=False)
        for weight in self.penalised_weights():
            nn.init.xavier_uniform_(weight)
        self.inner_lr = nn.Parameter(torch.full((num_latents,), float(inner_lr_init)))
        self.finetuning_lr = nn.Parameter(torch.full((embedding_dim,), float(finetuning_lr_init)))

    def penalised_weights(self) -> list[Tensor]:
        """The weight matrices of the encoder, relation network and decoder (the L2 penalty's)."""
        return [m.weight for m in (self.encoder, *self.relation, self.decoder) if isinstance(m, nn.Linear)]

    # -- the three networks ------------------------------------------------------------------------
    def encode(self, support: Tensor, one_hot: Tensor) -> Normal:
        """The Gaussian over each class's code: ``[examples, embedding_dim]`` embeddings and their
        ``[examples, ways]`` one-hot labels -> a distribution of batch shape ``[ways, num_latents]``."""
        codes = self.encoder(F.dropout(support, self.dropout_rate, self.training))
        examples = codes.shape[0]
        pairs = torch.cat(
            [codes.unsqueeze(1).expand(examples, examples, -1), codes.unsqueeze(0).expand(examples, examples, -1)], -1
        )
        relations = self.relation(pairs).mean(1)
        per_class = (one_hot.transpose(0, 1) @ relations) / one_hot.sum(0).unsqueeze(-1)
        return _gaussian(per_class, offset=0.0)

    def decode(self, latents: Tensor) -> Tensor:
        """Classifier weights ``[ways, embedding_dim]`` of codes ``[ways, num_latents]``: sampled in training
        mode, the means in eval mode."""
        ways = latents.shape[0]
        glorot_stddev = math.sqrt(2.0 / (ways + self.embedding_dim))
        return self._sample(_gaussian(self.decoder(latents), offset=glorot_stddev))

    def logits(self, embeddings: Tensor, weights: Tensor) -> Tensor:
        """``[examples, embedding_dim]`` embeddings and ``[ways, embedding_dim]`` weights -> ``[examples, ways]``."""
        return F.dropout(embeddings, self.dropout_rate, self.training) @ weights.transpose(0, 1)

    def _sample(self, distribution: Normal) -> Tensor:
        return distribution.rsample() if self.training else distribution.mean

    # -- adaptation ------------------------------------------------------------------------------
    def adapt_task(
        self,
        support: Tensor,
        support_y: Tensor,
        one_hot: Tensor,
        task_loss: TaskLoss,
        *,
        inner_steps: int,
        finetuning_steps: int,
    ) -> LatentAdaptation:
        """Classifier weights for one task from its embedded support set (Algorithm 1).

        ``inner_steps`` gradient steps on the codes, decoding them again at every step, then
        ``finetuning_steps`` steps on the decoded weights, both with the learned per-dimension
        step sizes (:func:`~lit_meta.functional.adapt`, second order while grad is enabled).

        Both loops descend ``ways * task_loss`` on the support set: the summed cross-entropy
        divided by the shots. The paper's support loss is a sum over the support set (Eq. 3);
        the code keeps a code and a weight vector per support example, so each gets a shot's
        share of its class's gradient: with one code per class (the paper's ``z_n``), dividing
        by the shots gives the code's steps for the code's step sizes.

        Args:
            support: support embeddings ``[examples, embedding_dim]``.
            support_y: their labels ``0 .. ways-1``.
            one_hot: the labels one-hot, ``[examples, ways]``, every class present.
            task_loss: ``(logits, labels) -> mean loss`` (the learner's cross-entropy).
            inner_steps: steps in latent space.
            finetuning_steps: steps in parameter space.
        """
        ways = one_hot.shape[-1]

        def support_loss(weights: Tensor) -> Tensor:
            return ways * task_loss(self.logits(support, weights), support_y)

        prior = self.encode(support, one_hot)
        latents = self._sample(prior)
        if self.training:
            standard = Normal(torch.zeros_like(latents), torch.ones_like(latents))
            kl = (prior.log_prob(latents) - standard.log_prob(latents)).mean()  # one-sample estimate, as the code
        else:
            kl = latents.new_zeros(())
        in_latent_space = adapt(
            lambda p: support_loss(self.decode(p["latents"])),
            {"latents": latents},
            steps=inner_steps,
            step_size={"latents": self.inner_lr},
        )
        adapted_latents = in_latent_space.params["latents"]
        finetuned = adapt(
            lambda p: support_loss(p["weights"]),
            {"weights": self.decode(adapted_latents)},
            steps=finetuning_steps,
            step_size={"weights": self.finetuning_lr},
        )
        return LatentAdaptation(
            weights=finetuned.params["weights"],
            kl=kl,
            encoder_penalty=F.mse_loss(latents, adapted_latents.detach()),
            support_losses=torch.cat([in_latent_space.support_losses, finetuned.support_losses]),
        )

    # -- regularisers ------------------------------------------------------------------------------
    def l2_penalty(self) -> Tensor:
        """``sum(w^2) / 2`` over :meth:`penalised_weights` (TensorFlow's ``l2_regularizer``, unscaled)."""
        return torch.stack([w.square().sum() for w in self.penalised_weights()]).sum() / 2

    def orthogonality_penalty(self) -> Tensor:
        """Mean squared difference between the correlation matrix of the decoder's rows and the identity.

        Rows of the ``[num_latents, 2 * embedding_dim]`` matrix of the code (``torch``'s weight
        transposed): one per latent dimension (the meta-training objective, Section 2.3).
        """
        rows = self.decoder.weight.transpose(0, 1)
        norms = rows.norm(dim=1, keepdim=True) + 1e-32
        correlation = (rows @ rows.transpose(0, 1)) / (norms @ norms.transpose(0, 1))
        identity = torch.eye(rows.shape[0], dtype=rows.dtype, device=rows.device)
        return (correlation - identity).square().mean()


def _gaussian(parameters: Tensor, offset: float) -> Normal:
    """The Gaussian of ``[..., 2 * size]`` outputs: means, then unnormalised standard deviations."""
    means, unnormalised = parameters.chunk(2, dim=-1)
    stddev = torch.clamp(torch.exp(unnormalised) - (1.0 - offset), min=MIN_STDDEV)
    return Normal(means, stddev, validate_args=False)
