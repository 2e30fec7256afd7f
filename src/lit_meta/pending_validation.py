"""A checkpoint taken between a training batch and the validation due after it resumes into that validation.

``ModelCheckpoint(every_n_train_steps=...)`` saves in ``on_train_batch_end``, before the
validation that follows the batch (at the end of an epoch, or every ``val_check_interval``
batches). Lightning (2.6) resumes such a checkpoint taken at an epoch's last batch in the
next epoch, as if that validation had run: the resumed run has no validation point at that
step, unlike the uninterrupted run, which changes the curve and which checkpoint is "best".
:func:`mark_pending_validation` writes into such a checkpoint the loop state Lightning saves
when interrupted at the first batch of that validation, from which it resumes by running the
whole validation, then training on, as the uninterrupted run does.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.trainer.states import RunningStage

_EPOCH_BATCHES = "epoch_loop.batch_progress"
_VAL_BATCHES = "epoch_loop.val_loop.batch_progress"


def validation_pending(trainer: Trainer) -> bool:
    """Whether the trainer is between a training batch and the validation Lightning runs after it
    (``on_train_batch_end`` of a batch after which validation is due)."""
    if trainer.state.stage != RunningStage.TRAINING:
        return False
    epoch_loop = trainer.fit_loop.epoch_loop
    batches = epoch_loop.batch_progress.total
    if batches.completed != batches.processed - 1:
        return False  # not between the batch's step and the end of its hooks
    data_fetcher = trainer.fit_loop._data_fetcher
    return data_fetcher is not None and epoch_loop._should_check_val_fx(data_fetcher)


def mark_pending_validation(checkpoint: dict[str, Any], trainer: Trainer) -> None:
    """Rewrites, in place, the loop state of a checkpoint saved while :func:`validation_pending`:
    the batch counts as completed and the validation as started at its first batch, so a run
    resumed from it validates at the same step as the uninterrupted run, with the same metrics."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    if _EPOCH_BATCHES not in loops or _VAL_BATCHES not in loops or not validation_pending(trainer):
        return
    for counts in (loops[_EPOCH_BATCHES]["total"], loops[_EPOCH_BATCHES]["current"]):
        counts["completed"] = counts["processed"]
    for counts in (loops[_VAL_BATCHES]["total"], loops[_VAL_BATCHES]["current"]):
        done = counts["completed"]
        counts.update(ready=done + 1, started=done + 1, processed=done)
