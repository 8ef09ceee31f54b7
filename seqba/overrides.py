"""``key=value`` overrides of a recipe: what a value means, and how it is set into the config tree.

A value is read as YAML only where YAML means what the text says: a number, a boolean, null, a flow list
``[4, 8]`` or mapping ``{repeats: 2}``, or ONE quoted scalar (``"no"``: the string, not a boolean). Anything else
is the text itself: a comment (``/tmp/st #8`` would be ``/tmp/st``), a block mapping (``/a: b``), an anchor or
alias, a tag, a document marker, a parse error, or a plain scalar whose YAML reading is a string
(``/tmp/a  b`` keeps both spaces). :func:`format_override` writes any value so that it reads back the same.
A mapping value is merged into its section. :mod:`seqba.config` applies them; ``seqba.compare`` builds them.
"""
from __future__ import annotations

import math
from typing import Any

import yaml

from seqba.errors import ConfigError

__all__ = ["override_value", "format_override", "parse_override", "override_keys", "apply_override"]


def _yaml_value(raw: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``raw`` is a YAML value that means what it says (module docstring), else ``(False, None)``."""
    try:
        events = list(yaml.parse(raw, Loader=yaml.SafeLoader))
        node = yaml.compose(raw, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return False, None
    if node is None or raw[node.end_mark.index:].strip() or raw[:node.start_mark.index].strip():
        return False, None  # only a comment, or a comment / marker / property around the value
    for event in events:
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            return False, None
        if isinstance(event, yaml.CollectionStartEvent) and not event.flow_style:
            return False, None  # a block mapping or list: ``/tmp/a: b``, ``- x``
        if getattr(event, "tag", None) is not None:
            return False, None  # an explicit tag (``!!str``, ``!x``)
        if isinstance(event, yaml.ScalarEvent) and event.style not in (None, "'", '"'):
            return False, None  # a block scalar (``|``, ``>``)
    value = yaml.safe_load(raw)
    if isinstance(node, yaml.ScalarNode) and node.style is None and (isinstance(value, str) or ":" in raw):
        return False, None  # plain text: kept verbatim (YAML would trim its spaces, read 1:30 as 90)
    return _plain(value), value


def _plain(value: Any) -> bool:
    """Whether ``value`` holds only str, int, float, bool, None, lists and dicts (not YAML's dates)."""
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, (str, int, float, bool))


def override_value(raw: str) -> Any:
    """The value of ``key=RAW``: YAML where it means what the text says, else the text itself (see the rule above).

    Examples: ``4`` -> 4, ``1e-4`` -> 1e-4, ``[4, 8]`` -> [4, 8], ``{repeats: 2}`` -> {"repeats": 2}, ``"no"`` ->
    ``"no"``, ``no`` -> False, ``/tmp/st #8/x`` -> ``"/tmp/st #8/x"``, ``/a: b`` -> ``"/a: b"``, empty -> ``""``.
    """
    if not raw.strip():
        return ""
    is_yaml, value = _yaml_value(raw)
    return value if is_yaml else raw


def format_override(key: str, value: Any) -> str:
    """``key=value`` text that :func:`override_value` reads back as ``value`` (a str, int, float, bool, None, or
    a list/dict of those); what ``seqba.compare`` uses for the overrides it builds (``output_dir``, ``seed``).

    Raises:
        ValueError: a value of another type (e.g. a date), or one that would not read back the same.
    """
    if isinstance(value, str) and override_value(value) == value:
        return f"{key}={value}"
    if not _plain(value):
        raise ValueError(f"{key}: cannot write a {type(value).__name__} as a key=value override")
    style = '"' if isinstance(value, str) else None  # a string YAML would retype: ``"no"``, ``"4"``
    text = yaml.safe_dump(value, default_style=style, default_flow_style=True, width=math.inf).strip()
    text = text[:-len("\n...")] if text.endswith("\n...") else text  # the end marker of a bare scalar
    if override_value(text) != value:
        raise ValueError(f"{key}: {value!r} cannot be written as a key=value override")
    return f"{key}={text}"


def parse_override(override: str) -> tuple[tuple[str, ...], Any]:
    """``"key.path=value"`` -> (key path, value read by :func:`override_value`).

    Raises:
        ConfigError: not ``key=value``, or an empty key.
    """
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value (e.g. ba.repeats=4)")
    key, raw = override.split("=", 1)
    path = tuple(key.strip().split("."))
    if not all(path):
        raise ConfigError(f"override {override!r}: empty key in {key.strip()!r}")
    return path, override_value(raw)


def _leaves(path: tuple[str, ...], value: Any) -> list[tuple[str, ...]]:
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in _leaves(path + (str(k),), v)]
    return [path]


def override_keys(override: str) -> list[tuple[str, ...]]:
    """The key paths ``override`` sets: ``train.resume=x`` -> [("train", "resume")]; a section value
    ``train={resume: x, max_updates: 4}`` -> [("train", "resume"), ("train", "max_updates")].

    Raises:
        ConfigError: as :func:`parse_override`.
    """
    return _leaves(*parse_override(override))


def _merge(section: dict, values: dict) -> None:
    """Set ``values`` into ``section`` key by key, recursively into sub-sections."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            _merge(section[key], value)
        else:
            section[key] = value


def apply_override(tree: dict, override: str) -> tuple[str, ...]:
    """Set ``key.path=value`` (:func:`override_value`) in the plain-dict config ``tree``; return the key path.

    A mapping value is merged into the section (``ba={repeats: 2}`` sets ``ba.repeats`` and keeps the recipe's
    other ``ba`` keys), as the same keys given one by one would be.

    Raises:
        ConfigError: not ``key=value``, an empty key, or a path through a non-section.
    """
    path, value = parse_override(override)
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if child is None:  # an empty section in the recipe (``ba:``)
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(path[:depth + 1])} is not a section")
        node = child
    if isinstance(value, dict) and isinstance(node.get(path[-1]), dict):
        _merge(node[path[-1]], value)
    else:
        node[path[-1]] = value
    return path
