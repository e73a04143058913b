"""Typed settings built once from the options (docs/design.md, 'Settings and defaults').

A step's settings are one frozen dataclass whose fields carry the defaults; the flag that sets a
field takes its default from the field (``default=MaskingSettings.min_component_px``), so each default
is written once. ``from_options`` reads every field from a parsed ``argparse.Namespace`` or a plain
dict (a checkpoint's saved options); a field the options lack, or hold as ``None``, keeps its
default, so a parser without some step's flags and the options of older checkpoints still work.
A field named differently from its flag says so in its metadata: ``field(..., metadata={"option": "mask_height"})``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, TypeVar

SettingsT = TypeVar("SettingsT", bound="FromOptions")


def option_values(options: argparse.Namespace | Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The options as a mapping (``vars`` of a Namespace; ``{}`` for ``None``)."""
    if options is None:
        return {}
    return options if isinstance(options, Mapping) else vars(options)


class FromOptions:
    """Mixin of a settings dataclass: :meth:`from_options` builds it from parsed options."""

    @classmethod
    def from_options(cls: type[SettingsT], options: argparse.Namespace | Mapping[str, Any] | None,
                     **overrides: Any) -> SettingsT:
        """Each field from ``options[<option name>]`` (``overrides`` first); absent or ``None`` keeps the default.

        Raises ``ValueError`` naming the option when a field without a default is missing.
        """
        values = option_values(options)
        chosen: dict[str, Any] = {}
        for item in fields(cls):  # type: ignore[arg-type]
            name = item.metadata.get("option", item.name)
            if item.name in overrides:
                chosen[item.name] = overrides[item.name]
            elif values.get(name) is not None:
                chosen[item.name] = values[name]
            elif item.default is MISSING and item.default_factory is MISSING:
                raise ValueError(f"{cls.__name__}: option --{name} is required")
        return cls(**chosen)


def options_to_dict(opt: argparse.Namespace) -> dict[str, Any]:
    """The options as a plain JSON-compatible dict (for opt.json and checkpoints)."""
    plain: dict[str, Any] = {}
    for key, value in sorted(vars(opt).items()):
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        plain[key] = value
    return plain
