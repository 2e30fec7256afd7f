"""The non-finite guard of meta-training and evaluation.

A NaN or infinite loss or meta-gradient stops the run at the step it appears, before the
optimiser writes it into the weights, with the global step, the stage and the likeliest
cause. The cause is told by the inputs of the meta-batch: non-finite inputs blame the
data (a broken file, a transform dividing by zero); finite inputs mean the optimisation
diverged, and the learner says which rates to lower (:meth:`~lit_meta.learners.MetaLearner.divergence_fix`).

The checks cost one host synchronisation each on the success path: ``isfinite`` of the
loss, and of the stacked norms of all the gradients (one fused ``torch._foreach_norm``).
Everything else runs only once something is already non-finite.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from lit_meta.data.episode import EpisodeBatch
from lit_meta.errors import NonFiniteGradientError, NonFiniteLossError

TURN_OFF = "(the learner's check_finite=False turns these checks off)"


def nonfinite_inputs(batch: EpisodeBatch) -> str | None:
    """Where ``batch`` holds a NaN or an infinity (``"support_x of episode 2"``), or ``None``."""
    for name in ("support_x", "query_x", "support_y", "query_y"):
        values = getattr(batch, name)
        if not values.is_floating_point() or values.dim() == 0:
            continue
        bad = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
        if bool(bad.any()):
            return f"{name} of episode {int(bad.nonzero()[0])}"
    return None


def likeliest_cause(batch: EpisodeBatch | None, divergence_fix: str) -> str:
    """The data when ``batch`` holds non-finite values, otherwise divergence and its fix."""
    if batch is None:
        return f"check that the inputs are finite; if they are, the optimisation diverged: {divergence_fix}"
    where = nonfinite_inputs(batch)
    if where is not None:
        return f"the input data contains NaN or inf ({where} of this meta-batch): check the dataset and its transform"
    return f"the inputs of this meta-batch are finite, so the optimisation diverged: {divergence_fix}"


def check_loss(loss: Tensor, batch: EpisodeBatch | None, *, what: str, where: str, divergence_fix: str) -> None:
    """Raises :class:`~lit_meta.errors.NonFiniteLossError` unless every value of ``loss`` is finite.

    Args:
        loss: the loss (a scalar, or one value per episode).
        batch: the meta-batch it was computed on, for the cause (``None``: not an ``EpisodeBatch``).
        what: the name of the loss (``"meta-loss"``).
        where: the global step and stage (``"global step 6 (train)"``).
        divergence_fix: what to change when the inputs are finite.
    """
    finite = torch.isfinite(loss.detach())
    if bool(finite.all()):
        return
    episode = f" of episode {int((~finite.reshape(-1)).nonzero()[0])}" if loss.numel() > 1 else ""
    value = loss.detach().reshape(-1)[~finite.reshape(-1)][0].item()
    raise NonFiniteLossError(
        f"the {what}{episode} is {value} at {where}: {likeliest_cause(batch, divergence_fix)} {TURN_OFF}"
    )


def check_gradients(
    named_parameters: Sequence[tuple[str, nn.Parameter]], batch: EpisodeBatch | None, *, where: str, divergence_fix: str
) -> None:
    """Raises :class:`~lit_meta.errors.NonFiniteGradientError` if a gradient holds a NaN or an infinity.

    One fused norm per gradient (``torch._foreach_norm``) and one synchronisation for all of them;
    the failing parameters are named only on the failure path.
    """
    named = [(name, p.grad) for name, p in named_parameters if p.grad is not None]
    if not named:
        return
    norms = torch.stack(torch._foreach_norm([grad for _, grad in named]))
    finite = torch.isfinite(norms)
    if bool(finite.all()):
        return
    names = [name for (name, _), ok in zip(named, finite.tolist(), strict=True) if not ok]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise NonFiniteGradientError(
        f"the meta-gradient of {shown} is not finite at {where} while the meta-loss was: "
        f"{likeliest_cause(batch, divergence_fix)} {TURN_OFF}"
    )


@contextlib.contextmanager
def located(batch: EpisodeBatch, *, where: str, stage: str) -> Iterator[None]:
    """Adds the global step and stage to a :class:`~lit_meta.errors.NonFiniteLossError` raised inside
    (by the inner loop, which knows neither), and blames the data when the batch holds non-finite inputs.

    Any other error raised inside while the batch holds non-finite inputs (a probability distribution
    refusing NaN parameters, say) becomes a :class:`~lit_meta.errors.NonFiniteLossError` blaming the
    data, with the original as its cause; with finite inputs it propagates unchanged.
    """
    try:
        yield
    except Exception as error:
        inputs = nonfinite_inputs(batch)
        if inputs is not None:
            first_line = str(error).splitlines()[0] if str(error) else ""
            raise NonFiniteLossError(
                f"{stage} at {where}: the input data contains NaN or inf ({inputs} of this meta-batch): check the "
                f"dataset and its transform (it raised {type(error).__name__}: {first_line[:200]}) {TURN_OFF}"
            ) from error
        if isinstance(error, NonFiniteLossError):
            raise NonFiniteLossError(f"{stage} at {where}: {error} {TURN_OFF}") from error
        raise
