"""Sinusoid regression, the toy task distribution of MAML (Finn et al., 2017, Section 5.1)."""

from __future__ import annotations

import numpy as np

from lit_meta.data.datasets.base import MetaDataset, SplitName, TaskDistribution


class SinusoidTasks(TaskDistribution):
    """Functions ``y = A sin(x - phi)`` with ``A ~ U[0.1, 5]``, ``phi ~ U[0, pi]``, ``x ~ U[-5, 5]``.

    Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast
    Adaptation of Deep Networks", ICML, Section 5.1. A task's parameters are
    ``[amplitude, phase]``; inputs and targets are ``[n, 1]``.
    """

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, float(np.pi)),
        input_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        self.amplitude = amplitude
        self.phase = phase
        self.input_range = input_range

    def sample_task(self, rng: np.random.Generator) -> np.ndarray:
        return np.array([rng.uniform(*self.amplitude), rng.uniform(*self.phase)])

    def sample_inputs(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(*self.input_range, size=(n, 1))

    def evaluate(self, task: np.ndarray, x: np.ndarray) -> np.ndarray:
        amplitude, phase = task
        return amplitude * np.sin(x - phase)


class Sinusoid(MetaDataset):
    """Embedded, unlimited sinusoid regression tasks; needs no download.

    All three splits draw from the same distribution (as in the MAML paper);
    they differ in their random streams, which the sampler seeds by split.

    Args:
        amplitude: range of the amplitude ``A``.
        phase: range of the phase ``phi``.
        input_range: range of the inputs ``x``.
    """

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, float(np.pi)),
        input_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        self.tasks = SinusoidTasks(amplitude, phase, input_range)

    def split(self, name: SplitName) -> SinusoidTasks:
        return self.tasks
