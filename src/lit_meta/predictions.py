"""What a learner's ``predict_step`` returns for a meta-batch, and its rows for a predictions file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class EpisodePredictions:
    """The predictions for the queries of every episode of a meta-batch, from a model adapted to its support set.

    Attributes:
        labels: ``[tasks, queries]`` predicted episode labels ``0 .. ways-1`` (classification), or
            ``[tasks, queries, output_dim]`` predicted values (regression).
        classes: ``[tasks, ways]`` the episodes' class ids (:attr:`~lit_meta.data.EpisodeBatch.classes`):
            ``classes[t, label]`` is the dataset's class behind label ``label`` of episode ``t``.
            ``[tasks, 0]`` for regression.
        probabilities: ``[tasks, queries, ways]`` softmax of the logits; ``None`` for regression.
        targets: the batch's ``query_y``: true labels (or values) where the data knows them.
    """

    labels: Tensor
    classes: Tensor
    probabilities: Tensor | None
    targets: Tensor

    @property
    def is_classification(self) -> bool:
        return self.probabilities is not None

    @property
    def class_ids(self) -> Tensor:
        """``[tasks, queries]`` the predicted class ids: :attr:`labels` mapped through :attr:`classes`."""
        return self.classes.gather(1, self.labels)

    def to(self, *args: Any, **kwargs: Any) -> EpisodePredictions:
        """Moved like :meth:`torch.Tensor.to` (Lightning moves predictions to the CPU with it)."""
        probabilities = None if self.probabilities is None else self.probabilities.to(*args, **kwargs)
        return EpisodePredictions(
            self.labels.to(*args, **kwargs), self.classes.to(*args, **kwargs), probabilities,
            self.targets.to(*args, **kwargs),
        )  # fmt: skip

    def rows(self, first_episode: int = 0) -> list[dict[str, Any]]:
        """One row per query, for a CSV file: ``episode`` (counted from ``first_episode``), ``query``, then
        ``label``, ``class_id``, ``probability``, ``true_label``, ``true_class_id`` (classification) or
        ``prediction`` and ``target`` (regression; values joined by spaces when there are several)."""
        rows = []
        for t in range(self.labels.shape[0]):
            for q in range(self.labels.shape[1]):
                row: dict[str, Any] = {"episode": first_episode + t, "query": q}
                if self.is_classification:
                    label, truth = int(self.labels[t, q]), int(self.targets[t, q])
                    assert self.probabilities is not None
                    row.update(
                        label=label,
                        class_id=int(self.classes[t, label]),
                        probability=round(float(self.probabilities[t, q, label]), 6),
                        true_label=truth,
                        true_class_id=int(self.classes[t, truth]),
                    )
                else:
                    row.update(prediction=_values(self.labels[t, q]), target=_values(self.targets[t, q]))
                rows.append(row)
        return rows


def _values(values: Tensor) -> str:
    return " ".join(f"{float(v):.6g}" for v in values.reshape(-1))
