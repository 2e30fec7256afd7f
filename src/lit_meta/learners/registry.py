"""The learners lit-meta knows: one registry for the command line, checkpoint loading and ``lit-meta adapt``.

A learner is registered when it is a concrete subclass of
:class:`~lit_meta.learners.base.MetaLearner`, not a family base
(:attr:`~lit_meta.learners.base.MetaLearner.family_base`), and

* it is defined in a module of the :mod:`lit_meta.learners` package (found by walking
  the package: adding ``learners/my_learner.py`` is enough);
* or another package declares it in the ``lit_meta.learners`` entry-point group
  (``[project.entry-points."lit_meta.learners"] my_learner = "my_package.module:MyLearner"``;
  an entry point may also name a module, whose learners then count);
* or its module has been imported (a user's own subclass, ``--model my_project.MyMAML``).

Checkpoints name their learner's class; loading looks it up here and never imports a
module a checkpoint names.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from importlib.metadata import entry_points

from lit_meta.errors import LitMetaError
from lit_meta.learners.base import MetaLearner, is_learner

ENTRY_POINT_GROUP = "lit_meta.learners"
"""The entry-point group through which other packages register their learners."""


class UnknownLearnerError(LitMetaError, ValueError):
    """A learner name that no registered learner has."""


def class_path(cls: type) -> str:
    """``"package.module.Class"``: the name a checkpoint records for a learner."""
    return f"{cls.__module__}.{cls.__qualname__}"


def registered_learners() -> dict[str, type[MetaLearner]]:
    """Every registered concrete learner by its class path, sorted by path.

    Imports the modules of :mod:`lit_meta.learners` and the entry points of
    :data:`ENTRY_POINT_GROUP` (a broken entry point raises with its name), then
    collects the learners (:func:`~lit_meta.learners.base.is_learner`) defined so far.
    """
    _import_learner_modules()
    found: dict[str, type[MetaLearner]] = {}
    pending: list[type[MetaLearner]] = [MetaLearner]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if is_learner(cls):
            found[class_path(cls)] = cls
    return dict(sorted(found.items()))


def resolve_learner(path: str) -> type[MetaLearner]:
    """The registered learner a checkpoint or a config names, by class path or by a re-exported name.

    ``"lit_meta.learners.maml.MAML"`` and ``"lit_meta.MAML"`` both give :class:`~lit_meta.learners.MAML`:
    a name is resolved through modules already imported, never by importing it.

    Raises:
        UnknownLearnerError: no registered learner has that name; the message says how to register it.
    """
    learners = registered_learners()
    if path in learners:
        return learners[path]
    module, _, name = path.rpartition(".")
    alias = getattr(sys.modules.get(module), name, None)
    if isinstance(alias, type) and alias in learners.values():
        return alias
    raise UnknownLearnerError(
        f"{path} is not a registered lit-meta learner, and lit-meta does not import modules that a checkpoint "
        f"names. Register it: import its module first (in Python: import {module or path}; with lit-meta adapt: "
        f'--import {module or path}); or declare it in your package\'s "{ENTRY_POINT_GROUP}" entry-point group '
        f'(pyproject.toml: under [project.entry-points."{ENTRY_POINT_GROUP}"], '
        f'{name.lower() or "my_learner"} = "{module}:{name}") and install the package; or put its file in '
        "lit_meta/learners/. Registered learners: " + ", ".join(learners)
    )


def _import_learner_modules() -> None:
    # Not cached: a package installed (or put on sys.path) since the last call is found. Modules
    # already imported cost a dictionary look-up.
    package = importlib.import_module("lit_meta.learners")
    for module in pkgutil.iter_modules(package.__path__, prefix=f"{package.__name__}."):
        importlib.import_module(module.name)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as error:
            raise LitMetaError(
                f"the {ENTRY_POINT_GROUP} entry point {entry_point.name!r} = {entry_point.value!r} "
                f"(from {entry_point.dist.name if entry_point.dist else 'an unknown distribution'}) "
                f"cannot be loaded: {type(error).__name__}: {error}"
            ) from error
