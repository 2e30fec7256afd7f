"""Pieces shared by the subcommands that are not LightningCLI ones: ``lit-meta adapt`` and ``lit-meta embed``."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch

from lit_meta.errors import LitMetaError


def import_user_modules(names: Sequence[str]) -> None:
    """The modules the user named with ``--import``, so the learners they define are registered.

    Raises:
        LitMetaError: a module that cannot be imported.
    """
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise LitMetaError(
                f"--import {name}: {exc}; run lit-meta from the module's folder or put that folder on PYTHONPATH"
            ) from exc


def torch_device(name: str) -> torch.device:
    """The torch device named ``name`` (``cpu``, ``cuda``, ``cuda:1`` ...), checked to be usable here.

    Raises:
        LitMetaError: a name torch does not know, or CUDA on a machine without it.
    """
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise LitMetaError(f"device {name!r} is not a torch device ({exc}); use e.g. cpu or cuda") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LitMetaError(f"device {name!r}: CUDA is not available on this machine; use --device cpu")
    return device
