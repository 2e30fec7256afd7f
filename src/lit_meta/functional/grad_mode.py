"""Autograd for an inner loop inside Lightning's validation, test and predict steps.

Lightning runs those steps under :func:`torch.inference_mode`, where no gradient can be
taken, and the tensors of the batch are inference tensors, which autograd cannot save
for backward even once inference mode is left. :class:`enable_adaptation_grad` leaves
inference mode and enables grad; used as a decorator it also clones the inference
tensors among the step's arguments (:func:`clone_inference_tensors`), so an inner loop
(:func:`~lit_meta.functional.adapt`) runs in a ``test_step`` as it does in training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def clone_inference_tensors(value: T) -> T:
    """``value`` with every tensor made under inference mode replaced by a normal clone.

    Looks into tuples, lists, dicts and dataclasses (an :class:`~lit_meta.data.EpisodeBatch`);
    other tensors and objects are returned as they are, so outside inference mode it copies nothing.
    Call it inside :class:`enable_adaptation_grad` (a clone made under inference mode is one again).
    """
    if isinstance(value, Tensor):
        return value.clone() if torch.is_inference(value) else value  # type: ignore[return-value]
    if isinstance(value, (tuple, list)):
        items = [clone_inference_tensors(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)  # type: ignore[return-value]
    if isinstance(value, Mapping):
        return type(value)({k: clone_inference_tensors(v) for k, v in value.items()})  # type: ignore[call-arg]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: clone_inference_tensors(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)  # type: ignore[type-var]
    return value


class enable_adaptation_grad:
    """Autograd on, even inside :func:`torch.inference_mode` (Lightning's validation, test and predict).

    As a context manager it leaves inference mode and enables grad; clone the batch's tensors
    inside it with :func:`clone_inference_tensors` (it returns that function)::

        def test_step(self, batch, batch_idx):
            with enable_adaptation_grad() as autograd_ready:
                batch = autograd_ready(batch)
                fast = adapt(support_loss, params, steps=1, step_size=0.4).params

    As a decorator it does both for the whole step, cloning the inference tensors among its arguments::

        @enable_adaptation_grad()
        def test_step(self, batch, batch_idx): ...

    Results computed inside keep their graph: ``detach()`` what you log or return.
    """

    def __init__(self) -> None:
        self._contexts: list[contextlib.ExitStack] = []

    def __enter__(self) -> Callable[[T], T]:
        context = contextlib.ExitStack()
        context.enter_context(torch.inference_mode(False))
        context.enter_context(torch.enable_grad())
        self._contexts.append(context)
        return clone_inference_tensors

    def __exit__(self, *exc_info: object) -> None:
        self._contexts.pop().__exit__(*exc_info)

    def __call__(self, function: F) -> F:
        @functools.wraps(function)
        def with_adaptation_grad(*args: Any, **kwargs: Any) -> Any:
            with self:
                return function(*clone_inference_tensors(args), **clone_inference_tensors(kwargs))

        return with_adaptation_grad  # type: ignore[return-value]
