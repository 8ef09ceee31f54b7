"""Tasks: what differs between model families (data, model, loss, validation, evaluation) behind one interface.

``TASKS`` maps a recipe's ``task:`` name to the :class:`~seqba.tasks.spec.TaskSpec` of its family. A family is
one module exposing ``SPEC``:

* the built-in families are the names below;
* a family outside seqba needs no edit here: a recipe names its module by dotted path, ``task:
  mylab.tasks.summarise`` (a module with a dot in its name, importable where seqba runs: installed, or on
  ``PYTHONPATH``). Every process that loads the recipe (``seqba.train``, ``seqba.eval`` of its checkpoints,
  ``seqba.compare``'s runs) imports it the same way, as fairseq's ``--user-dir`` does. See
  ``docs/adding_a_task.md``.

Modules are imported on first use so that ``import seqba`` stays light; iterating over ``TASKS`` lists the
built-in names only.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping

from seqba.errors import ConfigError
from seqba.tasks.spec import TaskSpec

__all__ = ["TASKS"]

_MODULES = {
    "translation": "seqba.tasks.translation",
    "language_modeling": "seqba.tasks.language_modeling",
    "image_classification": "seqba.tasks.image_classification",
}


def _module_path(name: object) -> str | None:
    """The module of task ``name``: built-in, or a dotted module path; None for anything else."""
    if not isinstance(name, str):
        return None
    if name in _MODULES:
        return _MODULES[name]
    return name if "." in name and all(part.isidentifier() for part in name.split(".")) else None


def _load(name: str) -> TaskSpec | None:
    """The ``SPEC`` of task ``name``; None when its module does not exist.

    Raises:
        ConfigError: the module exists but fails to import, or has no ``SPEC`` that is a ``TaskSpec``.
    """
    path = _module_path(name)
    if path is None:
        return None
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as err:
        if err.name is not None and (path == err.name or path.startswith(err.name + ".")):
            return None  # the module itself is not there (not a task); an import inside it fails below
        raise ConfigError(f"task {name!r}: importing {path} failed: {err}") from err
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, TaskSpec):
        raise ConfigError(f"task {name!r}: module {path} has no SPEC (a seqba.tasks.spec.TaskSpec)")
    return spec


class _Registry(Mapping):
    """Read-only mapping task name -> ``TaskSpec``; dotted module paths resolve on lookup."""

    def __getitem__(self, name: str) -> TaskSpec:
        spec = _load(name)
        if spec is None:
            raise KeyError(name)
        return spec

    def __iter__(self):
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in _MODULES or _load(name) is not None)


TASKS = _Registry()
