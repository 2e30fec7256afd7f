"""MetaLearner: the LightningModule every meta-learning algorithm builds on."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_meta.data.episode import Episode, EpisodeBatch
from lit_meta.errors import EpisodeConfigError
from lit_meta.metrics import EpisodeMeanCI

TaskModel = Callable[[Tensor], Tensor]
"""A model adapted to one task: inputs -> logits (classification) or predictions (regression)."""

Stage = Literal["train", "val", "test"]


def loss_with_gradients(value: Tensor, params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> Tensor:
    """A scalar equal to ``value`` whose gradient with respect to ``params[i]`` is ``grads[i]``.

    Learners that compute their meta-gradient themselves (a backward per task
    to bound memory, Reptile's update) return this from ``training_step``. The
    Trainer's single backward then fills ``.grad`` with exactly ``grads``, so
    DDP's gradient all-reduce, gradient clipping, accumulation and precision
    plugins work as with any other loss.
    """
    surrogate = sum(
        ((p * g.detach()).sum() for p, g in zip(params, grads, strict=True) if g is not None),
        torch.zeros((), device=value.device),
    )
    return value.detach() + surrogate - surrogate.detach()


class MetaLearner(L.LightningModule, ABC):
    """Base of every meta-learner: episodes in, meta-loss and episodic metrics out.

    A subclass implements two hooks:

    * :meth:`meta_loss` - the meta-training objective of a meta-batch (the mean
      query loss over its tasks, for most algorithms);
    * :meth:`adapt` - a task model for one new task from its support set.

    Validation and test adapt to each episode's support set and score its query
    set: ``{stage}/loss`` and ``{stage}/acc`` (classification) or ``{stage}/mse``
    (regression) are logged as the mean over episodes, with ``{stage}/acc_ci95``
    etc. the half-width of the 95% confidence interval. ``predict_step`` returns
    the query labels (or predictions) of every episode. Classification or
    regression is read from the episodes (integer or float targets).

    Lightning evaluates under :func:`torch.inference_mode`. Learners that adapt by
    gradient descent set ``adapts_with_gradients = True`` and the base leaves
    inference mode around their adaptation, so a default ``Trainer()`` works.

    Args:
        backbone: any ``nn.Module``; learners call it functionally and never
            mutate its weights while adapting.
        meta_lr: learning rate of the outer (meta) optimiser.
        meta_optimizer: ``"adam"`` or ``"sgd"``.
        weight_decay: weight decay of the outer optimiser.
        lr_schedule: ``"constant"`` or ``"cosine"`` annealing of the outer
            learning rate over ``trainer.max_steps`` (Antoniou et al., 2019).
    """

    adapts_with_gradients: ClassVar[bool] = False

    def __init__(
        self,
        backbone: nn.Module,
        meta_lr: float = 1e-3,
        meta_optimizer: Literal["adam", "sgd"] = "adam",
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
    ) -> None:
        super().__init__()
        # The backbone object is kept in the hyperparameters so that
        # load_from_checkpoint rebuilds the learner without user code.
        self.save_hyperparameters(ignore=["backbone"])
        self.hparams["backbone"] = backbone
        self.backbone = backbone
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict({name: EpisodeMeanCI() for name in ("loss", "acc", "mse")})
                for stage in ("val", "test")
            }
        )

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Any, *args: Any, weights_only: bool | None = False, **kwargs: Any
    ) -> Any:
        """Lightning's ``load_from_checkpoint``; the backbone comes back from the checkpoint.

        The backbone object is stored in the checkpoint's hyperparameters, which
        ``torch.load(weights_only=True)`` (torch's default since 2.6) refuses, so
        this loads with ``weights_only=False``: only load checkpoints you trust,
        as with any pickle. Pass ``backbone=...`` to rebuild it yourself instead.
        """
        return super().load_from_checkpoint(checkpoint_path, *args, weights_only=weights_only, **kwargs)

    # -- hooks for subclasses ----------------------------------------------------------------
    @abstractmethod
    def meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """The meta-training loss of a meta-batch (a scalar to minimise)."""

    @abstractmethod
    def adapt(self, support_x: Tensor, support_y: Tensor) -> TaskModel:
        """A model for the task given by a support set (labels ``0 .. ways-1`` or float targets)."""

    def task_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Loss of predictions on one task: cross-entropy for labels, MSE for float targets.

        Override to change the loss everywhere it is used (inner and outer loop).
        """
        if targets.is_floating_point():
            return F.mse_loss(outputs, targets)
        return F.cross_entropy(outputs, targets)

    # -- Lightning steps ---------------------------------------------------------------------
    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> Tensor:
        loss = self.meta_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: EpisodeBatch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Query labels (classification) or predictions (regression) of every episode."""
        outputs = torch.stack([self._adapted_outputs(episode) for episode in batch])
        return outputs.argmax(-1) if batch.is_classification else outputs

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # -- evaluation ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def adaptation_context(self) -> Iterator[None]:
        """Enables autograd for gradient-based adaptation, even inside Lightning's inference mode."""
        if not self.adapts_with_gradients:
            yield
            return
        with torch.inference_mode(False), torch.enable_grad():
            yield

    def _adapted_outputs(self, episode: Episode) -> Tensor:
        with self.adaptation_context():
            support_x, support_y, query_x = episode.support_x, episode.support_y, episode.query_x
            if self.adapts_with_gradients and torch.is_inference(support_x):
                # Tensors made under inference mode cannot be saved for backward.
                support_x, support_y, query_x = support_x.clone(), support_y.clone(), query_x.clone()
            outputs = self.adapt(support_x, support_y)(query_x)
        return outputs.detach()

    def _evaluate(self, batch: EpisodeBatch, stage: Literal["val", "test"]) -> None:
        metrics = self.metrics[stage]
        for episode in batch:
            outputs = self._adapted_outputs(episode)
            targets = episode.query_y
            self._check_head(outputs, episode)
            metrics["loss"].update(self.task_loss(outputs.float(), targets).reshape(1))
            if episode.is_classification:
                metrics["acc"].update((outputs.argmax(-1) == targets).float().mean().reshape(1))
            else:
                metrics["mse"].update(F.mse_loss(outputs.float(), targets).reshape(1))

    def _check_head(self, outputs: Tensor, episode: Episode) -> None:
        if episode.is_classification and outputs.shape[-1] != episode.ways:
            raise EpisodeConfigError(
                f"the learner outputs {outputs.shape[-1]} logits per example but the episodes are "
                f"{episode.ways}-way; set the backbone's output size to {episode.ways} or the "
                f"datamodule's ways to {outputs.shape[-1]}"
            )

    def _log_epoch_metrics(self, stage: Literal["val", "test"]) -> None:
        for name, metric in self.metrics[stage].items():
            if metric.update_count == 0:
                continue
            values = metric.compute()
            self.log(f"{stage}/{name}", values["mean"], prog_bar=name in ("acc", "mse"))
            self.log(f"{stage}/{name}_ci95", values["ci95"])
            metric.reset()

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.meta_optimizer == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(
                self.parameters(), lr=hp.meta_lr, weight_decay=hp.weight_decay
            )
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=hp.meta_lr, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant":
            return optimizer
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(int(total), 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
