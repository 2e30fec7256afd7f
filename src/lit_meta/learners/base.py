"""MetaLearner: the LightningModule every meta-learning algorithm builds on."""

from __future__ import annotations

import contextlib
import copy
import inspect
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor, nn

from lit_meta.backbones.config import build_from_config
from lit_meta.callbacks import RetainFreedCPUMemory
from lit_meta.data.datasets.base import TaskDistribution
from lit_meta.data.episode import Episode, EpisodeBatch
from lit_meta.data.sampler import EpisodeShape
from lit_meta.errors import EpisodeConfigError
from lit_meta.metrics import EpisodeMeanCI

TaskModel = Callable[[Tensor], Tensor]
"""A model adapted to one task: inputs -> logits (classification) or predictions (regression)."""

Stage = Literal["train", "val", "test"]
LRSchedule = Literal["constant", "cosine", "linear", "step"]


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


CHECKPOINT_LEARNER_KEY = "lit_meta_learner"
"""Checkpoint entry naming the learner's class, so ``MetaLearner.load_from_checkpoint`` finds it."""


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
        lr_schedule: how the outer learning rate changes with the optimiser step:
            ``"constant"``; ``"cosine"`` annealing to 0 over ``trainer.max_steps``
            (MAML++, Antoniou et al., 2019); ``"linear"`` decay to 0 over
            ``trainer.max_steps`` (Reptile, Nichol et al., 2018); ``"step"``:
            multiplied by ``lr_decay_factor`` every ``lr_decay_every`` steps
            (Prototypical Networks halve it every 2,000 episodes, Snell et al., 2017).
        lr_decay_every: steps between decays of the ``"step"`` schedule.
        lr_decay_factor: factor of each decay of the ``"step"`` schedule.
        retain_cpu_memory: while a Trainer runs this learner on CPU under glibc
            malloc, keep freed memory in the process for the next task instead of
            returning it to the kernel (:class:`~lit_meta.callbacks.RetainFreedCPUMemory`,
            added by :meth:`configure_callbacks`; 1.3-1.6x faster MAML steps, same
            peak memory). Process-wide while the Trainer runs; ``False`` leaves
            malloc as it is.
    """

    adapts_with_gradients: ClassVar[bool] = False

    def __init__(
        self,
        backbone: nn.Module,
        meta_lr: float = 1e-3,
        meta_optimizer: Literal["adam", "sgd"] = "adam",
        weight_decay: float = 0.0,
        lr_schedule: LRSchedule = "constant",
        lr_decay_every: int = 2000,
        lr_decay_factor: float = 0.5,
        retain_cpu_memory: bool = True,
    ) -> None:
        super().__init__()
        if lr_decay_every < 1 or not 0.0 < lr_decay_factor <= 1.0:
            raise ValueError(
                f"lr_decay_every={lr_decay_every}, lr_decay_factor={lr_decay_factor}: "
                "decay every >= 1 steps by a factor in (0, 1]"
            )
        # The backbone is kept in the hyperparameters so that load_from_checkpoint
        # rebuilds the learner without user code: as its class path and init args
        # when LightningCLI built it or it records them (lit-meta's backbones), a
        # plain config that loads with weights_only=True; else as the module
        # object itself (pickled).
        given = _given_hyperparameters.get()
        self.save_hyperparameters(ignore=["backbone"])
        if given and "backbone" in given:
            self.hparams["backbone"] = given["backbone"]
        else:
            self.hparams["backbone"] = getattr(backbone, "init_config", None) or backbone
        if isinstance(self.hparams["backbone"], Mapping):  # loggers read the initial snapshot
            self._hparams_initial["backbone"] = copy.deepcopy(self.hparams["backbone"])
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

        Called on :class:`MetaLearner` itself, it loads whichever learner the
        checkpoint holds (``MetaLearner.load_from_checkpoint(path)``); the
        learner's class must be imported (lit-meta's own always are).

        A backbone built by ``lit-meta`` (LightningCLI), or one of lit-meta's
        backbones, is stored as its class path and arguments. Any other module
        is stored pickled, which ``torch.load(weights_only=True)`` (torch's default
        since 2.6) refuses, so this loads with ``weights_only=False``: only load
        checkpoints you trust, as with any pickle. Pass ``backbone=...`` to
        rebuild it yourself instead.
        """
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=weights_only)
        learner = _recorded_learner(checkpoint, cls) if inspect.isabstract(cls) else cls
        hparams = checkpoint.get("hyper_parameters", {})
        if "backbone" not in kwargs and "_instantiator" not in hparams and isinstance(hparams.get("backbone"), Mapping):
            kwargs["backbone"] = build_from_config(hparams["backbone"])
        return super(MetaLearner, learner).load_from_checkpoint(
            checkpoint_path, *args, weights_only=weights_only, **kwargs
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_LEARNER_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"

    # -- hooks for subclasses ----------------------------------------------------------------
    @abstractmethod
    def meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """The meta-training loss of a meta-batch (a scalar to minimise)."""

    @abstractmethod
    def adapt(self, support_x: Tensor, support_y: Tensor) -> TaskModel:
        """A model for the task given by a support set (labels ``0 .. ways-1`` or float targets)."""

    def learned_step_sizes(self) -> dict[str, Tensor]:
        """Learned inner-loop step sizes by name (scalars), for monitoring; none by default."""
        return {}

    def task_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Loss of predictions on one task: cross-entropy for labels, MSE for float targets.

        Override to change the loss everywhere it is used (inner and outer loop).
        """
        if targets.is_floating_point():
            return F.mse_loss(outputs, targets)
        return F.cross_entropy(outputs, targets)

    # -- Lightning steps ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Checks the episodes the datamodule will serve against the backbone, before any step."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        shapes: Mapping[str, EpisodeShape] | None = getattr(datamodule, "shapes", None)
        splits = {"fit": ("train", "val"), "validate": ("val",)}.get(stage, ("test",))
        data_splits = getattr(datamodule, "splits", {})
        if shapes is None or any(isinstance(data_splits.get(s), TaskDistribution) for s in splits):
            return  # not an EpisodicDataModule, or regression (no ways)
        self.check_episode_shapes({split: shapes[split] for split in splits if split in shapes})

    def check_episode_shapes(self, shapes: Mapping[str, EpisodeShape]) -> None:
        """Raises :class:`~lit_meta.errors.EpisodeConfigError` for episodes the learner cannot score.

        Learners that fine-tune the backbone read the class scores from its
        last ``nn.Linear``, so its output size must equal the ways of every split.
        """
        if not self.adapts_with_gradients:
            return
        heads = [m for m in self.backbone.modules() if isinstance(m, nn.Linear)]
        if not heads:
            return
        for split, shape in shapes.items():
            if heads[-1].out_features != shape.ways:
                raise EpisodeConfigError(
                    f"the backbone's head (its last nn.Linear) has {heads[-1].out_features} outputs but the "
                    f"{split} episodes are {shape.ways}-way; set the backbone's output size to {shape.ways} "
                    f"or the datamodule's ways to {heads[-1].out_features}"
                )

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
        episodes = 0.0
        for name, metric in self.metrics[stage].items():
            if metric.update_count == 0:
                continue
            values = metric.compute()
            self.log(f"{stage}/{name}", values["mean"], prog_bar=name in ("acc", "mse"))
            self.log(f"{stage}/{name}_ci95", values["ci95"])
            episodes = float(values["count"])
            metric.reset()
        if episodes:
            self.log(f"{stage}/episodes", episodes)  # how many episodes the mean and CI are over

    # -- optimisation -------------------------------------------------------------------------
    def configure_callbacks(self) -> list[L.Callback]:
        """The callbacks this learner needs: :class:`RetainFreedCPUMemory` unless ``retain_cpu_memory=False``."""
        return [RetainFreedCPUMemory()] if self.hparams.get("retain_cpu_memory", True) else []

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
        if hp.lr_schedule == "step":
            scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=hp.lr_decay_every, gamma=hp.lr_decay_factor
            )
        else:
            steps = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
            total = max(int(steps), 1)
            if hp.lr_schedule == "cosine":
                scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
            else:
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _recorded_learner(checkpoint: dict[str, Any], base: type[MetaLearner]) -> type[MetaLearner]:
    """The concrete learner class a checkpoint was saved from, among the imported subclasses of ``base``."""
    path = checkpoint.get(CHECKPOINT_LEARNER_KEY) or checkpoint.get("hyper_parameters", {}).get("_class_path")
    if not path:
        raise ValueError(
            f"the checkpoint does not name its learner; call load_from_checkpoint on the learner's class "
            f"(e.g. MAML.load_from_checkpoint) instead of {base.__name__}"
        )
    known: dict[str, type[MetaLearner]] = {}
    pending = [base]
    while pending:
        cls = pending.pop()
        known[f"{cls.__module__}.{cls.__qualname__}"] = cls
        pending.extend(cls.__subclasses__())
    module, _, name = path.rpartition(".")
    alias = getattr(sys.modules.get(module), name, None)  # e.g. "lit_meta.MAML" exported by the package
    learner = known.get(path) or (alias if isinstance(alias, type) and alias in known.values() else None)
    if learner is None or inspect.isabstract(learner):
        raise ValueError(
            f"the checkpoint holds a {path}, which is not an imported subclass of {base.__name__}; "
            "import the module that defines it first"
        )
    return learner
