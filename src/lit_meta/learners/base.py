"""MetaLearner: the LightningModule every meta-learning algorithm builds on."""

from __future__ import annotations

import contextlib
import copy
import inspect
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.core.mixins.hparams_mixin import HyperparametersMixin, _given_hyperparameters
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.parsing import collect_init_args
from torch import Tensor, nn

from lit_meta.callbacks import RetainFreedCPUMemory
from lit_meta.data.datasets.base import TaskDistribution
from lit_meta.data.episode import Episode, EpisodeBatch
from lit_meta.data.sampler import EpisodeShape
from lit_meta.errors import CheckpointError, EpisodeConfigError, LitMetaError, NonFiniteLossError
from lit_meta.functional.grad_mode import clone_inference_tensors, enable_adaptation_grad
from lit_meta.learners import checkpoints, finite_checks
from lit_meta.learners.resuming import check_checkpoint
from lit_meta.metrics import EpisodeMeanCI
from lit_meta.pending_validation import mark_pending_validation
from lit_meta.predictions import EpisodePredictions

TaskModel = Callable[[Tensor], Tensor]
"""A model adapted to one task: inputs -> logits (classification) or predictions (regression)."""

Stage = Literal["train", "val", "test"]
LRSchedule = Literal["constant", "cosine", "linear", "step"]
ClassScores = Literal["backbone_head", "learner"]
"""Where a classifier's class scores come from: the outputs of the backbone's last ``nn.Linear``
(so its size must equal the ways), or the learner's own computation (any number of ways)."""

_SYNCED: dict[str, Any] = {"sync_dist": True, "reduce_fx": "max"}
"""``self.log`` options for values torchmetrics has already reduced across processes (identical on
every rank): Lightning asks for ``sync_dist`` at epoch level under DDP, and the max of identical
values leaves them exactly as they are (a mean could change the last bit)."""


class MetaLearner(L.LightningModule, ABC):
    """Base of every meta-learner: episodes in, meta-loss and episodic metrics out.

    A subclass implements two hooks:

    * :meth:`meta_loss` - the meta-training objective of a meta-batch (the mean
      query loss over its tasks, for most algorithms);
    * :meth:`adapt` - a task model for one new task from its support set.

    and states its traits as class attributes:

    * :attr:`evaluation_needs_autograd` - adaptation takes gradients, so the base
      leaves Lightning's :func:`torch.inference_mode` around it and a default
      ``Trainer()`` works;
    * :attr:`class_scores` - ``"backbone_head"`` when the class scores are the outputs
      of the backbone's last ``nn.Linear`` (checked against the ways of every split,
      and by ``lit-meta adapt`` against the classes of a new task: :meth:`check_ways`),
      ``"learner"`` when the learner computes them for any number of ways;
    * :meth:`adaptation_steps` - how many gradient steps adaptation takes (``None``
      for learners that adapt without steps).

    The family bases, :class:`~lit_meta.learners.gradient.GradientMetaLearner` and
    :class:`~lit_meta.learners.metric.MetricMetaLearner`, set these and implement most
    of the work; an algorithm is a small subclass of one of them.

    Validation and test adapt to each episode's support set and score its query
    set: ``{stage}/loss`` and ``{stage}/acc`` (classification) or ``{stage}/mse``
    (regression) are logged as the mean over episodes, with ``{stage}/acc_ci95``
    etc. the half-width of the 95% confidence interval. ``predict_step`` returns
    the query labels (or predictions) of every episode with the episodes' class ids
    (:class:`~lit_meta.predictions.EpisodePredictions`). Classification or
    regression is read from the episodes (integer or float targets).

    Every ``nn.Module`` constructor argument (the backbone, a relation module, an
    encoder) is kept in the hyperparameters as a config, its class path and init
    arguments, when it has one: lit-meta's backbones record theirs, and
    ``lit-meta`` (LightningCLI) passes the configs it built them from. Such
    checkpoints load with ``weights_only=True``. Other modules are kept pickled.

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
        retain_cpu_memory: whether, while a Trainer runs this learner on CPU under
            glibc malloc, freed memory stays in the process for the next task instead
            of going back to the kernel (:class:`~lit_meta.callbacks.RetainFreedCPUMemory`;
            faster gradient-based steps at the same peak memory, ``benchmarks/RESULTS.md``).
            It changes a process-wide allocator setting, so ``None`` (the default)
            leaves the choice to the owner of the process: the ``lit-meta`` command
            line retains, a learner used from Python leaves malloc alone. ``True``
            retains under any Trainer; ``False`` never.
        backbone_checkpoint: a lit-meta checkpoint (e.g. of a pre-trained
            :class:`~lit_meta.learners.baseline.Baseline`) whose backbone weights this
            learner starts meta-training from: :meth:`load_backbone_weights`, called
            once, by the first ``setup("fit")``. A run resumed with ``ckpt_path`` then
            gets its own weights back from that checkpoint (the file is still read
            first), and a learner loaded from a checkpoint of its own never reads it.
        check_finite: stop meta-training at the step a loss or meta-gradient becomes NaN or
            infinite (:class:`~lit_meta.errors.NonFiniteLossError`,
            :class:`~lit_meta.errors.NonFiniteGradientError`), before the optimiser writes it
            into the weights, and an evaluation whose loss does, naming the global step, the
            stage and the likeliest cause: non-finite inputs, otherwise divergence
            (:mod:`lit_meta.learners.finite_checks`). It costs a host synchronisation for the
            loss and one for the norms of all gradients at once (measured against a MAML step:
            ``benchmarks/finite_checks_cost.py``, ``benchmarks/RESULTS.md``); under DDP one
            collective per step more, so that every process stops together. ``False`` turns them off, and the
            inner-loop check of the gradient-based learners.
    """

    family_base: ClassVar[bool] = True
    """Set in the body of a base class (this one, a family base): not a learner of its own, so
    not registered, and its ``load_from_checkpoint`` loads whichever learner a checkpoint holds.
    Subclasses do not inherit it (it is read from the class's own namespace)."""
    evaluation_needs_autograd: ClassVar[bool] = False
    """Whether adaptation needs autograd (gradient steps), even under Lightning's inference mode."""
    class_scores: ClassVar[ClassScores] = "learner"
    """Where class scores come from: see :data:`ClassScores`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "adapts_with_gradients" in cls.__dict__:
            warnings.warn(
                f"{cls.__name__}.adapts_with_gradients is deprecated and will be removed in the next release: "
                "set evaluation_needs_autograd (and class_scores = 'backbone_head' if the backbone's last "
                "nn.Linear gives the class scores), or subclass GradientMetaLearner",
                DeprecationWarning,
                stacklevel=2,
            )
            cls.evaluation_needs_autograd = bool(cls.__dict__["adapts_with_gradients"])
            cls.class_scores = "backbone_head" if cls.evaluation_needs_autograd else "learner"

    def __init__(
        self,
        backbone: nn.Module,
        meta_lr: float = 1e-3,
        meta_optimizer: Literal["adam", "sgd"] = "adam",
        weight_decay: float = 0.0,
        lr_schedule: LRSchedule = "constant",
        lr_decay_every: int = 2000,
        lr_decay_factor: float = 0.5,
        retain_cpu_memory: bool | None = None,
        backbone_checkpoint: str | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if lr_decay_every < 1 or not 0.0 < lr_decay_factor <= 1.0:
            raise ValueError(
                f"lr_decay_every={lr_decay_every}, lr_decay_factor={lr_decay_factor}: "
                "decay every >= 1 steps by a factor in (0, 1]"
            )
        self._save_hyperparameters_with_module_configs(inspect.currentframe())
        self.backbone = backbone
        self._backbone_checkpoint_pending = backbone_checkpoint is not None
        self._train_batch: EpisodeBatch | None = None  # for the cause of a non-finite loss or gradient
        self._deferred_error: LitMetaError | None = None  # under DDP, until every process has heard of it
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict({name: EpisodeMeanCI() for name in ("loss", "acc", "mse")})
                for stage in ("val", "test")
            }
        )

    def _save_hyperparameters_with_module_configs(self, frame: Any) -> None:
        """``save_hyperparameters()`` of every constructor in the class chain, modules kept as configs.

        LightningCLI passes the configs it built modules from (``_given_hyperparameters``);
        otherwise a module's ``init_config`` (:class:`~lit_meta.backbones.config.RecordsConfig`)
        is used, and a module without one is kept as it is (pickled in checkpoints).
        """
        given = _given_hyperparameters.get()
        init_args: dict[str, Any] = {}
        for local_args in collect_init_args(frame, [], classes=(HyperparametersMixin,)):
            init_args.update(local_args)
        modules = {name: value for name, value in init_args.items() if isinstance(value, nn.Module)}
        self.save_hyperparameters(ignore=list(modules), frame=frame)
        for name, module in modules.items():
            config = checkpoints.module_config(module, (given or {}).get(name))
            self.hparams[name] = config
            if isinstance(config, Mapping):  # loggers read the initial snapshot
                self._hparams_initial[name] = copy.deepcopy(config)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Any, *args: Any, weights_only: bool | None = False, **kwargs: Any
    ) -> Any:
        """Lightning's ``load_from_checkpoint``; sub-networks come back from the checkpoint.

        Called on :class:`MetaLearner` (or a family base) itself, it loads whichever
        learner the checkpoint holds (``MetaLearner.load_from_checkpoint(path)``), looked
        up in the registry (:mod:`lit_meta.learners.registry`); a class outside it is
        refused, never imported.

        Modules stored as configs (see the class docstring) are rebuilt from them, so
        ``weights_only=True`` works. A module stored pickled needs
        ``weights_only=False`` (the default here): only load checkpoints you trust, as
        with any pickle, or pass the module yourself (``backbone=...``). Checkpoints of
        an older format are upgraded (:meth:`upgrade_checkpoint`).

        Raises:
            UnknownLearnerError: called on the base, and the checkpoint's learner is not registered.
            CheckpointError: the file is not a readable checkpoint, or called on a learner's class, the
                checkpoint holds another learner (neither that class nor a subclass of it).
            CheckpointGlobalsError: ``weights_only=True`` and a module is stored pickled, or the file
                names code that cannot be imported (a ``pickle.UnpicklingError``).
            ValueError: the checkpoint names no learner, or an instantiator other than LightningCLI's.
        """
        from lit_meta.learners.registry import resolve_learner

        checkpoint = checkpoints.read(checkpoint_path, weights_only)
        hparams = checkpoint.setdefault("hyper_parameters", {})
        if is_learner(cls):
            learner = cls
            if recorded := checkpoints.recorded_path(checkpoint):
                found = registered_class(recorded)
                checkpoints.check_learner(
                    checkpoint_path, recorded, found, cls, exact=False,
                    fix=f"load it with {found.__name__ if found else 'its class'}.load_from_checkpoint, or with "
                    "MetaLearner.load_from_checkpoint, which loads whichever learner a checkpoint holds",
                )  # fmt: skip
                learner = found or cls
        else:
            learner = resolve_learner(checkpoints.recorded_learner(checkpoint, cls.__name__))
        kwargs = {**checkpoints.stored_modules(hparams, passed=kwargs), **kwargs}
        if checkpoint.get(checkpoints.CHECKPOINT_FORMAT_KEY, 1) < checkpoints.CHECKPOINT_FORMAT:
            learner.upgrade_checkpoint(checkpoint)
            checkpoint[checkpoints.CHECKPOINT_FORMAT_KEY] = checkpoints.CHECKPOINT_FORMAT
            checkpoint_path = checkpoints.in_memory(checkpoint)
        return super(MetaLearner, learner).load_from_checkpoint(
            checkpoint_path, *args, weights_only=weights_only, **kwargs
        )

    @classmethod
    def upgrade_checkpoint(cls, checkpoint: dict[str, Any]) -> None:
        """Rewrites, in place, a checkpoint of an older format for this version
        (:data:`~lit_meta.learners.checkpoints.CHECKPOINT_FORMAT`).

        Format 1 stored ``retain_cpu_memory=True`` by default, when learners changed malloc
        unasked; it becomes ``None`` (the owner of the process decides). Family bases and
        learners extend this for their own renamed options.

        Raises:
            ValueError: an option this version cannot map, with how to load the checkpoint.
        """
        hparams = checkpoint["hyper_parameters"]
        if hparams.get("retain_cpu_memory") is True:
            hparams["retain_cpu_memory"] = None

    def load_backbone_weights(self, path: str) -> None:
        """Copies into the backbone the weights of another lit-meta checkpoint's backbone.

        Every tensor under ``backbone.`` in the checkpoint's ``state_dict`` whose name this
        backbone has is copied; the backbone's other tensors stay as they are (a MAML
        head over the features of a pre-trained Baseline, say). The file is read with
        ``weights_only=True``. Logs how many tensors were loaded and which were not.

        Raises:
            ValueError: ``path`` holds no ``state_dict``, no tensor of it matches this
                backbone by name, or a matching name has another shape.
        """
        state = checkpoints.read(path, weights_only=True).get("state_dict")
        if not isinstance(state, Mapping):
            raise ValueError(f"{path} holds no state_dict; give a checkpoint that lit-meta fit (or a Trainer) wrote")
        own = self.backbone.state_dict()
        matched = {
            name: value
            for key, value in state.items()
            if key.startswith("backbone.") and (name := key.removeprefix("backbone.")) in own
        }
        mismatched = [
            f"{n} {tuple(v.shape)} vs {tuple(own[n].shape)}" for n, v in matched.items() if v.shape != own[n].shape
        ]
        if mismatched:
            raise ValueError(
                f"the backbone in {path} has other shapes than this {type(self.backbone).__name__} "
                f"({'; '.join(mismatched)}); give a checkpoint of a learner with the same backbone architecture"
            )
        if not matched:
            raise ValueError(
                f"no tensor under backbone. in {path} has a name this {type(self.backbone).__name__} has; "
                "give a checkpoint of a learner with the same backbone architecture"
            )
        self.backbone.load_state_dict(matched, strict=False)
        kept = sorted(set(own) - set(matched))
        rank_zero_info(
            f"{type(self).__name__}: loaded {len(matched)} of the backbone's {len(own)} tensors from {path}"
            + (f"; left as initialised: {', '.join(kept)}" if kept else "")
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint a Trainer restores (``ckpt_path``) is checked against this learner, whose own
        hyperparameters win (:func:`~lit_meta.learners.resuming.check_checkpoint`)."""
        # The learner's own checkpoint holds its backbone: backbone_checkpoint no longer applies.
        self._backbone_checkpoint_pending = False
        if self._trainer is not None:  # not load_from_checkpoint, whose hyperparameters are the checkpoint's
            fitting = self._trainer.state.fn == "fit"
            check_checkpoint(self, checkpoint, self._trainer.ckpt_path, fitting)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[checkpoints.CHECKPOINT_LEARNER_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint[checkpoints.CHECKPOINT_FORMAT_KEY] = checkpoints.CHECKPOINT_FORMAT
        if self._trainer is not None:
            # Saved before a due validation (ModelCheckpoint every_n_train_steps): resume into it.
            mark_pending_validation(checkpoint, self._trainer)

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

    def require_class_labels(self, labels: Tensor) -> None:
        """Raises :class:`~lit_meta.errors.EpisodeConfigError` for float targets: a learner that only classifies
        was given a regression task."""
        if labels.is_floating_point():
            raise EpisodeConfigError(
                f"{type(self).__name__} classifies, but the support targets are {labels.dtype} "
                "(a regression task); use integer labels 0 .. ways-1"
            )

    def adaptation_steps(self) -> int | None:
        """Gradient steps :meth:`adapt` takes by default; ``None`` when it adapts without steps."""
        return None

    def divergence_fix(self) -> str:
        """What to change when meta-training diverges (a non-finite loss on finite inputs), for the
        messages of the non-finite checks; learners with their own rates name them first."""
        return (
            f"lower meta_lr (now {self.hparams.meta_lr:g}) or clip the meta-gradient "
            "(Trainer(gradient_clip_val=1.0); --trainer.gradient_clip_val 1.0 on the command line)"
        )

    @property
    def checks_finite(self) -> bool:
        """Whether losses and meta-gradients are checked for NaN and inf (``check_finite``)."""
        return self.hparams.get("check_finite", True)

    # -- Lightning steps ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Checks the episodes the datamodule will serve against the backbone, before any step; at the first fit,
        loads the backbone of ``backbone_checkpoint`` (before Lightning restores a ``ckpt_path`` to resume)."""
        if stage == "fit" and self._backbone_checkpoint_pending:
            self.load_backbone_weights(self.hparams.backbone_checkpoint)
            self._backbone_checkpoint_pending = False
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        shapes: Mapping[str, EpisodeShape] | None = getattr(datamodule, "shapes", None)
        splits = {"fit": ("train", "val"), "validate": ("val",)}.get(stage, ("test",))
        data_splits = getattr(datamodule, "splits", {})
        if shapes is None or any(isinstance(data_splits.get(s), TaskDistribution) for s in splits):
            return  # not an EpisodicDataModule, or regression (no ways)
        self.check_episode_shapes({split: shapes[split] for split in splits if split in shapes})

    def check_episode_shapes(self, shapes: Mapping[str, EpisodeShape]) -> None:
        """Raises :class:`~lit_meta.errors.EpisodeConfigError` for episodes the learner cannot score."""
        for split, shape in shapes.items():
            self.check_ways(shape.ways, f"the {split} episodes are {shape.ways}-way")

    def head_size(self) -> int | None:
        """The number of classes the learner scores, when fixed: the output size of the backbone's last
        ``nn.Linear`` for ``class_scores = "backbone_head"``; ``None`` when any number of ways works."""
        if self.class_scores != "backbone_head":
            return None
        heads = [m for m in self.backbone.modules() if isinstance(m, nn.Linear)]
        return heads[-1].out_features if heads else None

    def check_ways(self, ways: int, where: str, fix: str | None = None) -> None:
        """Raises :class:`~lit_meta.errors.EpisodeConfigError` unless the learner can score ``ways`` classes.

        The one head check: the Trainer's ``setup`` calls it for every split, ``lit-meta adapt``
        for the classes of a new task.

        Args:
            ways: the number of classes of the tasks.
            where: what has that many classes, for the message (``"the train episodes are 5-way"``).
            fix: how to fix a mismatch; default: change the backbone's output size or the datamodule's ways.
        """
        outputs = self.head_size()
        if outputs is None or outputs == ways:
            return
        raise EpisodeConfigError(
            f"{type(self).__name__} labels exactly {outputs} classes: {self.head_origin()} but {where}; "
            f"{fix or self.head_fix(ways)}"
        )

    def head_origin(self) -> str:
        """Why the learner labels :meth:`head_size` classes, for :meth:`check_ways`'s message."""
        return f"the backbone's head (its last nn.Linear) has {self.head_size()} outputs"

    def head_fix(self, ways: int) -> str:
        """How to make the learner label ``ways`` classes, for :meth:`check_ways`'s message."""
        return f"set the backbone's output size to {ways} or the datamodule's ways to {self.head_size()}"

    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> Tensor:
        try:
            with self._located(batch, "train meta-loss"):
                loss = self.meta_loss(batch)
        except NonFiniteLossError as error:
            self._stop_or_defer(error)
            return torch.full((), float("nan"), device=batch.support_x.device, requires_grad=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    # -- the non-finite checks (lit_meta.learners.finite_checks) -----------------------------
    def _where(self, stage: str) -> str:
        return f"global step {self.global_step} ({stage}, epoch {self.current_epoch})"

    def _located(self, batch: EpisodeBatch, stage: str) -> contextlib.AbstractContextManager[None]:
        """Adds the step and stage to the inner loop's non-finite errors raised inside."""
        if not self.checks_finite:
            return contextlib.nullcontext()
        return finite_checks.located(batch, where=self._where(stage.split()[0]), stage=stage)

    def _distributed(self) -> bool:
        return self._trainer is not None and self.trainer.world_size > 1

    def _stop_or_defer(self, error: LitMetaError) -> None:
        """Raises ``error`` now in one process; under DDP keeps it for :meth:`_raise_deferred`, which every
        process reaches, so that none is left waiting for the others in a collective."""
        if not self._distributed():
            raise error
        self._deferred_error = self._deferred_error or error

    def _raise_deferred(self, where: str) -> None:
        """Under DDP, one decision for all processes: each raises its own error, or says another one stopped."""
        if not self._distributed():
            return
        error, self._deferred_error = self._deferred_error, None
        if self.trainer.strategy.reduce_boolean_decision(error is None, all=True):
            return
        # Only now, on the way out, do the processes exchange their messages, so that whichever error
        # the launcher shows names the cause.
        messages: list[str | None] = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(messages, None if error is None else str(error))
        if error is not None:
            raise error
        rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
        raise NonFiniteLossError(f"process {rank} stopped at {where}: {message}")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._train_batch = batch if isinstance(batch, EpisodeBatch) else None

    def on_before_backward(self, loss: Tensor) -> None:
        """Stops at a non-finite meta-loss, whichever ``training_step`` computed it, in every process
        before any of them all-reduces its gradients."""
        if not self.checks_finite:
            return
        try:
            finite_checks.check_loss(
                loss, self._train_batch, what="meta-loss", where=self._where("train"),
                divergence_fix=self.divergence_fix(),
            )  # fmt: skip
        except NonFiniteLossError as error:
            self._stop_or_defer(error)
        self._raise_deferred(self._where("train"))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stops at a non-finite meta-gradient before the optimiser applies it. Skipped under a
        gradient scaler (``precision="16-mixed"``), which skips such steps and lowers its scale."""
        if not self.checks_finite or getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return
        finite_checks.check_gradients(
            list(self.named_parameters()), self._train_batch, where=self._where("train"),
            divergence_fix=self.divergence_fix(),
        )  # fmt: skip

    def validation_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: EpisodeBatch, batch_idx: int, dataloader_idx: int = 0) -> EpisodePredictions:
        """The query predictions of every episode, each from a model adapted to its own support set:
        labels local to the episode with the episodes' class ids, the probabilities and the true labels
        (:class:`~lit_meta.predictions.EpisodePredictions`; ``.class_ids`` maps labels to class ids).
        ``lit-meta predict`` writes them to a CSV file (:class:`~lit_meta.callbacks.EpisodePredictionWriter`)."""
        with self._located(batch, "predict adaptation"):
            outputs = self.evaluate_outputs(batch)
        if not batch.is_classification:
            return EpisodePredictions(outputs, batch.classes, None, batch.query_y)
        return EpisodePredictions(outputs.argmax(-1), batch.classes, outputs.float().softmax(-1), batch.query_y)

    def on_validation_epoch_start(self) -> None:
        self._reset_epoch_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._reset_epoch_metrics("test")

    def _reset_epoch_metrics(self, stage: Literal["val", "test"]) -> None:
        """Fresh metric states for an evaluation, owned by this process.

        ``reset`` replaces the state tensors. Under ``strategy="ddp_spawn"`` on CPU the learner
        reaches each process through shared memory, so until then every process updated the same
        tensors and the synced counts were doubled (8 episodes reported for 4)."""
        for metric in self.metrics[stage].values():
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # -- evaluation ---------------------------------------------------------------------------
    def adaptation_context(self) -> contextlib.AbstractContextManager[Any]:
        """Enables autograd for adaptation that needs it, even inside Lightning's inference mode
        (:class:`~lit_meta.functional.enable_adaptation_grad`)."""
        return enable_adaptation_grad() if self.evaluation_needs_autograd else contextlib.nullcontext()

    def evaluate_outputs(self, batch: EpisodeBatch) -> Tensor:
        """The query outputs of every task of ``batch`` from a task model adapted to its own support set:
        ``[tasks, queries, ways]`` logits, or ``[tasks, queries, output_dim]`` predictions; without gradients.

        Validation, test and ``predict_step`` score these. The default calls :meth:`adapt` task by
        task, with autograd on for learners that need it (:meth:`adaptation_context`), even under
        Lightning's inference mode. A learner that can adapt all the tasks of a meta-batch at once
        overrides it, with the same outputs.
        """
        return torch.stack([self._adapted_outputs(episode) for episode in batch])

    def _adapted_outputs(self, episode: Episode) -> Tensor:
        with self.adaptation_context():
            if self.evaluation_needs_autograd:  # tensors made under inference mode cannot be saved for backward
                episode = clone_inference_tensors(episode)
            outputs = self.adapt(episode.support_x, episode.support_y)(episode.query_x)
        return outputs.detach()

    def _evaluate(self, batch: EpisodeBatch, stage: Literal["val", "test"]) -> None:
        try:
            self._evaluate_batch(batch, stage)
        except NonFiniteLossError as error:  # under DDP the others learn of it at the end of the epoch
            self._stop_or_defer(error)

    def _evaluate_batch(self, batch: EpisodeBatch, stage: Literal["val", "test"]) -> None:
        metrics = self.metrics[stage]
        with self._located(batch, f"{stage} adaptation"):
            outputs = self.evaluate_outputs(batch)
        losses, scores = [], []
        for episode, task_outputs in zip(batch, outputs, strict=True):
            targets = episode.query_y
            self._check_head(task_outputs, episode)
            losses.append(self.task_loss(task_outputs.float(), targets))
            if episode.is_classification:
                scores.append((task_outputs.argmax(-1) == targets).float().mean())
            else:
                scores.append(F.mse_loss(task_outputs.float(), targets))
        loss = torch.stack(losses)
        if self.checks_finite:
            finite_checks.check_loss(
                loss, batch, what=f"{stage} query loss", where=self._where(stage), divergence_fix=self.divergence_fix()
            )
        metrics["loss"].update(loss)
        metrics["acc" if batch.is_classification else "mse"].update(torch.stack(scores))

    def _check_head(self, outputs: Tensor, episode: Episode) -> None:
        if episode.is_classification and outputs.shape[-1] != episode.ways:
            raise EpisodeConfigError(
                f"the learner outputs {outputs.shape[-1]} logits per example but the episodes are "
                f"{episode.ways}-way; set the backbone's output size to {episode.ways} or the "
                f"datamodule's ways to {outputs.shape[-1]}"
            )

    def _log_epoch_metrics(self, stage: Literal["val", "test"]) -> None:
        self._raise_deferred(self._where(stage))
        episodes = 0.0
        for name, metric in self.metrics[stage].items():
            if metric.update_count == 0:
                continue
            values = metric.compute()
            self.log(f"{stage}/{name}", values["mean"], prog_bar=name in ("acc", "mse"), **_SYNCED)
            self.log(f"{stage}/{name}_ci95", values["ci95"], **_SYNCED)
            episodes = float(values["count"])
            metric.reset()
        if episodes:
            self.log(f"{stage}/episodes", episodes, **_SYNCED)  # how many episodes the mean and CI are over

    # -- optimisation -------------------------------------------------------------------------
    def configure_callbacks(self) -> list[L.Callback]:
        """The callbacks this learner needs: :class:`RetainFreedCPUMemory` when ``retain_cpu_memory=True``.

        With ``None`` the ``lit-meta`` command line adds it, as the owner of its process. None when
        the Trainer has one already (from an earlier ``fit``), which Lightning would report replacing.
        """
        callbacks = self._trainer.callbacks if self._trainer is not None else []
        if not self.hparams.get("retain_cpu_memory") or any(isinstance(c, RetainFreedCPUMemory) for c in callbacks):
            return []
        return [RetainFreedCPUMemory()]

    def adjust_optimizer_state(self, checkpoint: dict[str, Any], stored: Mapping[str, Any], path: Any) -> None:
        """Makes the optimiser and schedule state of a checkpoint that ``fit`` resumes follow this learner's
        hyperparameters where they differ from the checkpoint's (``stored``): the learning rate is scaled
        by ``meta_lr`` over the checkpoint's (keeping the schedule's progress), ``weight_decay``,
        ``lr_decay_every`` and ``lr_decay_factor`` are replaced. Follows :meth:`configure_optimizers`;
        a learner that configures other optimisers overrides both.

        Raises:
            CheckpointError: ``meta_optimizer`` or ``lr_schedule`` differ: the checkpoint's state is
                another optimiser's or schedule's.
        """
        hp = self.hparams
        for key in ("meta_optimizer", "lr_schedule"):
            if stored.get(key, hp[key]) != hp[key]:
                raise CheckpointError(
                    f"{path} was saved with {key}={stored[key]!r}; its optimiser state cannot resume with "
                    f"{key}={hp[key]!r}. Resume with {key}: {stored[key]}, or start a new run without ckpt_path "
                    f"(backbone_checkpoint={path} starts it from the checkpoint's backbone weights)"
                )
        scale = hp.meta_lr / stored.get("meta_lr", hp.meta_lr)
        for optimizer in checkpoint.get("optimizer_states", []):
            for group in optimizer.get("param_groups", []):
                group["lr"] *= scale
                group["weight_decay"] = hp.weight_decay
                if "initial_lr" in group:
                    group["initial_lr"] = hp.meta_lr
        for scheduler in checkpoint.get("lr_schedulers", []):
            scheduler["base_lrs"] = [hp.meta_lr for _ in scheduler.get("base_lrs", [])]
            scheduler["_last_lr"] = [lr * scale for lr in scheduler.get("_last_lr", [])]
            if hp.lr_schedule == "step":
                scheduler.update(step_size=hp.lr_decay_every, gamma=hp.lr_decay_factor)

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


def is_learner(cls: type) -> bool:
    """Whether ``cls`` is a learner of its own: a concrete :class:`MetaLearner` that is not a family base."""
    return issubclass(cls, MetaLearner) and not inspect.isabstract(cls) and not cls.__dict__.get("family_base", False)


def registered_class(path: str) -> type[MetaLearner] | None:
    """The registered learner ``path`` names (:func:`~lit_meta.learners.registry.resolve_learner`), else ``None``."""
    from lit_meta.learners.registry import UnknownLearnerError, resolve_learner

    try:
        return resolve_learner(path)
    except UnknownLearnerError:
        return None


def init_arguments(cls: type) -> list[str]:
    """The keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up to the base classes."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = list(inspect.signature(init).parameters.values())[1:]
        names += [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return sorted(set(names))
