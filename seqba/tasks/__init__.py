"""Tasks: what differs between model families (data, model, loss, validation) behind one interface.

``TASKS`` maps a recipe's ``task:`` name to the module that defines it; a task module exposes ``SPEC``, a
:class:`seqba.tasks.base.TaskSpec`. Modules are imported on first use so that ``import seqba`` stays light.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping

_MODULES = {
    "translation": "seqba.tasks.translation",
    "language_modeling": "seqba.tasks.language_modeling",
    "image_classification": "seqba.tasks.image_classification",
}


class _Registry(Mapping):
    def __getitem__(self, name):
        return importlib.import_module(_MODULES[name]).SPEC

    def __iter__(self):
        return iter(_MODULES)

    def __len__(self):
        return len(_MODULES)

    def __contains__(self, name):
        return name in _MODULES


TASKS = _Registry()
