"""The errors of the ``lit-meta`` command line as one line each, naming the config key.

jsonargparse reports a bad value as a nested union of everything it tried (a dozen
lines after the full usage), and an error raised by a constructor while LightningCLI
instantiates the config comes out as two chained tracebacks and a namespace dump.
The functions here turn both into one line that starts with the config key
(``data.ways=0: an episode must discriminate at least 2 classes; set ways >= 2``);
a class path that does not resolve says what is missing, and for ``model`` lists the
registered learners with the nearest name. :mod:`lit_meta.cli` prints that line;
``--debug`` or ``LIT_META_DEBUG=1`` keeps jsonargparse's message and the traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import os
import re
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer

from lit_meta.errors import ConfigError, LitMetaError
from lit_meta.learners.base import init_arguments
from lit_meta.learners.registry import registered_learners

DEBUG_FLAG = "--debug"
DEBUG_ENVIRONMENT_VARIABLE = "LIT_META_DEBUG"

CONFIG_ERRORS = (LitMetaError, ValueError, MisconfigurationException)
"""What a constructor raises for a value it refuses; other exceptions keep their traceback, as bugs."""

_NOISE = re.compile(
    r"Does not validate against any of the Union subtypes|Subtypes: .*|Errors:|Given value( type)?: .*"
    r"|Expected a <class 'NoneType'>|Expected a path but .* either not accessible or invalid"
    r"|Problem with given class_path .*:|Parser key \".*\":"
)
"""The lines of a jsonargparse message that say what was tried rather than what is wrong."""


def split_debug_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug``, and whether it or ``LIT_META_DEBUG=1`` asks for tracebacks."""
    args = [arg for arg in argv if arg != DEBUG_FLAG]
    environment = os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")
    return args, environment or len(args) < len(argv)


def parse_error_line(message: str, hint: str = "") -> str:
    """jsonargparse's message for a value it refused, as one line starting with the config key.

    ``hint`` (the valid keys, for an unknown key) is appended as a sentence. A class path
    that does not resolve is described by :func:`class_path_problem`.
    """
    key = ".".join(re.findall(r'Parser key "([^"]+)"', message))
    class_paths = re.findall(
        r"Expected a path but (\S+) either not accessible|Expected a dot import path string: (\S+)"
        r"|Problem with given class_path '([^']+)'",
        message,
    )
    for path in dict.fromkeys(next(group for group in groups if group) for groups in class_paths):
        if key and (problem := class_path_problem(key, path)):
            return problem
    reasons: list[str] = []
    value = None
    for line in message.splitlines():
        line = line.strip().removeprefix("- ")
        if got := re.search(r"\.? Got value: (.*)$", line):
            value, line = got.group(1), line[: got.start()]
        if line and not _NOISE.fullmatch(line) and (line := _readable(line)) not in reasons:
            reasons.append(line)
    if given := re.search(r"^\s*Given value: (.*)$", message, re.MULTILINE):
        nested = re.fullmatch(r"NestedArg\(key='(\w+)', val='(.*)'\)", given.group(1))
        if nested and not key.endswith(f".{nested.group(1)}"):  # --data.wayz: the key under data
            key = f"{key}.{nested.group(1)}"
        if value is None and not given.group(1).startswith(("{", "Namespace(")):  # not a whole section
            value = nested.group(2) if nested else given.group(1)
    where = f"{key}={value}" if key and value is not None else key
    line = f"{where}: {'; '.join(reasons)}" if where else "; ".join(reasons)
    return f"{line}. {hint}" if hint else line


def _readable(reason: str) -> str:
    reason = re.sub(r"Expected a <class '([\w.]+)'>", r"expected \1", reason)
    reason = re.sub(r"Expected a typing\.Literal\[(.*)\]", r"expected one of \1", reason)
    return reason


def class_path_problem(key: str, class_path: str) -> str | None:
    """Why ``class_path`` (given for config key ``key``) names no class, or ``None`` when it does.

    A module that cannot be imported is named with the reason; a missing class gets the
    nearest name; for ``model`` the registered learners are listed.
    """
    module_name, _, name = class_path.rpartition(".")
    module = None
    if module_name:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return (
                    f"{key}: cannot import {class_path!r}: no module {exc.name!r} in the current folder or on "
                    "PYTHONPATH; run lit-meta from the folder that holds it or add that folder to PYTHONPATH"
                )
            return f"{key}: importing module {module_name!r} of {class_path!r} failed: {exc}"
        except Exception as exc:  # the user's module raised while importing: say what it raised
            return f"{key}: importing module {module_name!r} of {class_path!r} failed: {type(exc).__name__}: {exc}"
        if inspect.isclass(getattr(module, name, None)):
            return None
    if key == "model":
        learners = sorted({cls.__name__ for cls in registered_learners().values()})
        if name in learners:
            return None
        close = difflib.get_close_matches(name, learners, n=1)
        suggestion = ""
        if close:
            suggested = f"{module_name}.{close[0]}" if module is not None and hasattr(module, close[0]) else close[0]
            suggestion = f" Did you mean {suggested!r}?"
        return (
            f"{key}: unknown learner {class_path!r}.{suggestion} Registered learners: {', '.join(learners)} "
            "(or the import path of your own, e.g. my_project.MyLearner)"
        )
    if module is None:
        return f"{key}: {class_path!r} is not a class path; give module.Class (e.g. lit_meta.backbones.Conv4)"
    classes = [attribute for attribute, value in vars(module).items() if inspect.isclass(value)]
    close = difflib.get_close_matches(name, classes, n=1)
    suggestion = f" Did you mean '{module_name}.{close[0]}'?" if close else ""
    return f"{key}: module {module_name!r} has no class {name!r}.{suggestion}"


def instantiation_error(exc: BaseException, config: Namespace) -> ConfigError | None:
    """The :class:`ConfigError` for an exception raised while the config's classes are instantiated.

    jsonargparse wraps a constructor's exception in its own; the original is found in
    the chain, the class whose constructor raised it in its traceback, and that class's
    config key in ``config`` (the subcommand's). A message starting ``name=`` with
    ``name`` an argument of that class gets the full key (``data.ways=0: ...``).
    ``None`` for an exception that is not a refused value (a bug keeps its traceback).
    """
    original = _original(exc)
    if not isinstance(original, CONFIG_ERRORS):
        return None
    message = str(original)
    cls = _raising_class(original)
    key = _config_key(cls, config) if cls is not None else None
    if key is None:
        return ConfigError(message)
    argument = re.match(r"(\w+)=", message)
    if cls is not None and argument and argument.group(1) in init_arguments(cls):
        return ConfigError(f"{key}.{message}")
    return ConfigError(f"{key}: {message}")


def _original(exc: BaseException) -> BaseException:
    """The first exception of ``exc``'s chain that jsonargparse did not raise."""
    while _raised_by_jsonargparse(exc) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _raised_by_jsonargparse(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and f"{os.sep}jsonargparse{os.sep}" in frames[-1].filename


def _raising_class(exc: BaseException) -> type | None:
    """The class of the outermost constructor in ``exc``'s traceback: the one the config named."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            return type(frame.f_locals["self"])
    return None


def _config_key(cls: type, config: Namespace) -> str | None:
    if issubclass(cls, Trainer):
        return "trainer"
    for key, node in _class_nodes(config, ""):
        module_name, _, name = str(node["class_path"]).rpartition(".")
        try:
            if getattr(importlib.import_module(module_name), name) is cls:
                return key
        except (ImportError, AttributeError, ValueError):
            continue
    if dataclasses.is_dataclass(cls):  # given as the mapping of its fields, without a class_path
        fields = {field.name for field in dataclasses.fields(cls)}
        return next((key for key, node in _mappings(config, "") if set(node) == fields), None)
    return None


def _class_nodes(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    """``(key, node)`` for every ``class_path`` node under ``node``, keys without ``init_args``."""
    return ((key, mapping) for key, mapping in _mappings(node, key) if "class_path" in mapping)


def _mappings(node: Any, key: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(key, node)`` for every mapping under ``node`` (``node`` included), keys without ``init_args``."""
    if isinstance(node, Namespace):
        node = node.as_dict()
    if isinstance(node, dict):
        yield key, node
        for name, child in node.items():
            yield from _mappings(child, key if name == "init_args" else f"{key}.{name}".lstrip("."))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _mappings(child, f"{key}[{i}]")
