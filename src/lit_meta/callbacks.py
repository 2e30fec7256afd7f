"""Callbacks that only make sense for meta-learning: step-size monitoring, episode images,
keeping the per-task memory of CPU training in the process, writing episode predictions, and
ending a CPU (gloo) process group before its process exits."""

from __future__ import annotations

import atexit
import csv
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torch import Tensor

from lit_meta import glibc_malloc
from lit_meta.data.episode import EpisodeBatch
from lit_meta.predictions import EpisodePredictions


class StepSizeMonitor(L.Callback):
    """Logs the outer learning rates and the learner's learned inner-loop step sizes.

    Every training step (thinned by the Trainer's ``log_every_n_steps``) it logs
    ``lr`` (``lr/group{g}``, ``lr/optimizer{o}/...`` when there are several
    parameter groups or optimisers) and, for learners with learned inner step
    sizes (MAML++'s LSLR, Meta-SGD), the values of
    :meth:`~lit_meta.learners.MetaLearner.learned_step_sizes` under
    ``inner_lr/...``. The values are read at the start of the step, so each is
    the rate that step used (Lightning steps the schedulers before
    ``on_train_batch_end``). Unlike Lightning's ``LearningRateMonitor`` it needs
    no logger, so it can stay on in every run.
    """

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        values: dict[str, float] = {}
        for o, optimizer in enumerate(trainer.optimizers):
            prefix = "lr" if len(trainer.optimizers) == 1 else f"lr/optimizer{o}"
            for g, group in enumerate(optimizer.param_groups):
                values[f"{prefix}/group{g}" if len(optimizer.param_groups) > 1 else prefix] = float(group["lr"])
        step_sizes = getattr(pl_module, "learned_step_sizes", None)
        if callable(step_sizes):
            values.update({f"inner_lr/{name}": float(v) for name, v in step_sizes().items()})
        if values:
            pl_module.log_dict(values, on_step=True, on_epoch=False, batch_size=1)


class RetainFreedCPUMemory(L.Callback):
    """Keeps freed memory in the process while the Trainer runs on CPU under glibc malloc.

    Episodic training allocates and frees each task's activations in turn; glibc's
    defaults return them to the kernel and fault them back in for the next task,
    hundreds of thousands of page faults per second-order MAML step on Omniglot
    (:mod:`lit_meta.glibc_malloc`; measured in ``benchmarks/RESULTS.md``). For each Trainer stage on a CPU
    device this callback calls :func:`~lit_meta.glibc_malloc.retain_freed_memory`,
    and :func:`~lit_meta.glibc_malloc.release_freed_memory` when the stage ends.
    Peak memory stays that of the largest live set. The ``lit-meta`` command line adds
    it (unless the learner says ``retain_cpu_memory=False``), a learner used from Python
    only with ``retain_cpu_memory=True``: it changes a process-wide allocator setting
    (see :mod:`lit_meta.glibc_malloc` for what ``teardown`` restores and what it
    cannot). It does nothing on GPUs or when malloc is not glibc's (for example
    jemalloc preloaded).
    """

    announced: ClassVar[bool] = False
    """Whether this process has said so: once, not at every ``fit`` and ``test``."""

    def __init__(self) -> None:
        self.retaining = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.strategy.root_device.type != "cpu" or self.retaining:
            return
        self.retaining = glibc_malloc.retain_freed_memory()
        if self.retaining and not RetainFreedCPUMemory.announced:
            RetainFreedCPUMemory.announced = True
            rank_zero_info(
                "lit-meta: glibc malloc keeps freed memory for reuse while a Trainer runs in this process "
                "(retain_cpu_memory; fewer page faults per task)"
            )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.retaining:
            glibc_malloc.release_freed_memory()
            self.retaining = False


class DestroyProcessGroupAtExit(L.Callback):
    """Destroys the default ``torch.distributed`` process group when its process exits.

    Lightning destroys the process group at exit only for NCCL. A gloo group (DDP on
    CPU) is left to the interpreter's shutdown, where its threads can be torn down
    while still joinable: the process aborts with ``terminate called without an
    active exception`` (``SIGABRT``, exit status 134) after a run that finished, about
    one launch of two spawned gloo processes in ten on this project's CPU machine
    (``tests/test_destroy_process_group.py``, marked slow, launches them). In each
    process that sets up a Trainer inside an initialised process group, this callback
    registers one :mod:`atexit` handler that destroys the default group if it is still
    there; the group stays up for every stage that process runs. The ``lit-meta``
    command line adds it (it owns its process); from Python, add it to the Trainer's
    callbacks.
    """

    registered: ClassVar[bool] = False
    """Whether this process has registered the handler."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if DestroyProcessGroupAtExit.registered or not _process_group_initialized():
            return
        DestroyProcessGroupAtExit.registered = True
        atexit.register(destroy_default_process_group)


def destroy_default_process_group() -> None:
    """Destroys the default process group if it is initialised; nothing otherwise."""
    if _process_group_initialized():
        torch.distributed.destroy_process_group()


def _process_group_initialized() -> bool:
    # a build without torch.distributed has no is_initialized at all
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class EpisodeImageLogger(L.Callback):
    """Logs support and query grids of the first few episodes of training and validation.

    Once per ``fit``: from the first training batch and the first validation
    batch, each of the first ``episodes`` episodes becomes two images, its
    support set (one row per class, in label order) and its query set. They go
    to W&B (``WandbLogger.log_image``), TensorBoard (``add_image``), and, for
    other loggers with a ``log_dir`` (CSV), to PNG files in
    ``<log_dir>/episodes/``. Episodes that are not images (sinusoid
    regression) are skipped.

    Args:
        episodes: episodes to draw per split.
    """

    def __init__(self, episodes: int = 2) -> None:
        if episodes < 1:
            raise ValueError(f"episodes={episodes}: log at least one episode")
        self.episodes = episodes
        self._logged: set[str] = set()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logged.clear()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._log_once(trainer, batch, "train")

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not trainer.sanity_checking:
            self._log_once(trainer, batch, "val")

    def _log_once(self, trainer: L.Trainer, batch: Any, stage: str) -> None:
        if stage in self._logged or not isinstance(batch, EpisodeBatch) or batch.support_x.dim() != 5:
            return
        self._logged.add(stage)
        if trainer.global_rank != 0 or not trainer.loggers:
            return
        images: dict[str, np.ndarray] = {}
        for i, episode in enumerate(batch):
            if i == self.episodes:
                break
            images[f"{stage}_episode{i}_support"] = episode_grid(episode.support_x, episode.support_y, episode.ways)
            images[f"{stage}_episode{i}_query"] = episode_grid(episode.query_x, episode.query_y, episode.ways)
        for logger in trainer.loggers:
            _send(logger, images, stage, trainer.global_step)


def episode_grid(x: Tensor, y: Tensor, ways: int, padding: int = 2) -> np.ndarray:
    """Images ``[n, C, H, W]`` with labels ``y`` as one ``uint8`` grid ``[rows, cols, 3]``: a row per class."""
    x = x.detach().float().cpu()
    y = y.detach().cpu()
    lo, hi = x.amin(), x.amax()
    x = (x - lo) / (hi - lo).clamp_min(1e-12)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    rows = [x[y == c] for c in range(ways)]
    cols = max(len(r) for r in rows)
    _, _, height, width = x.shape
    grid = torch.ones(3, ways * (height + padding) + padding, cols * (width + padding) + padding)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = padding + r * (height + padding), padding + c * (width + padding)
            grid[:, top : top + height, left : left + width] = image
    return (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def _send(logger: Any, images: dict[str, np.ndarray], stage: str, step: int) -> None:
    if isinstance(logger, WandbLogger):
        # One key per kind of grid: W&B shows all the images of a key at one size.
        for part in ("support", "query"):
            names = [name for name in images if name.endswith(part)]
            logger.log_image(
                key=f"episodes/{stage}_{part}", images=[images[n] for n in names], caption=names, step=step
            )
    elif isinstance(logger, TensorBoardLogger):
        for name, image in images.items():
            logger.experiment.add_image(f"episodes/{name}", image, step, dataformats="HWC")
    elif getattr(logger, "log_dir", None):
        folder = Path(logger.log_dir) / "episodes"
        folder.mkdir(parents=True, exist_ok=True)
        for name, image in images.items():
            Image.fromarray(image).save(folder / f"{name}.png")


class EpisodePredictionWriter(BasePredictionWriter):
    """Writes the predictions of ``Trainer.predict`` to a CSV file, one row per query.

    The rows are :meth:`~lit_meta.predictions.EpisodePredictions.rows`: ``episode`` (counted over the
    run), ``query``, ``label`` (local to the episode), ``class_id`` (the dataset's class),
    ``probability``, ``true_label`` and ``true_class_id`` (regression: ``prediction``, ``target``).
    ``lit-meta predict`` adds it (``--predictions_path``); add it to a Trainer of your own for the same file.
    Under DDP each rank writes its own file, ``<path>.rank<r>``, as each predicts different episodes.

    Args:
        path: the CSV file; ``None``: ``predictions.csv`` in the Trainer's ``log_dir``.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = None if path is None else Path(path)
        self.written: Path | None = None
        self._file: Any = None
        self._writer: csv.DictWriter | None = None
        self._episodes = 0

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self.path or Path(trainer.log_dir or trainer.default_root_dir) / "predictions.csv"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.name}.rank{trainer.global_rank}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.written, self._file, self._writer, self._episodes = path, path.open("w", newline=""), None, 0

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(prediction, EpisodePredictions):
            raise TypeError(
                "EpisodePredictionWriter writes EpisodePredictions, "
                f"but predict_step returned {type(prediction).__name__}"
            )
        rows = prediction.rows(first_episode=self._episodes)
        self._episodes += prediction.labels.shape[0]
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=list(rows[0]))
            self._writer.writeheader()
        self._writer.writerows(rows)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            rank_zero_info(f"lit-meta: wrote the predictions for {self._episodes} episodes to {self.written}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


__all__ = ["EpisodeImageLogger", "EpisodePredictionWriter", "StepSizeMonitor", "episode_grid"]
