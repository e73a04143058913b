"""Settings dataclasses built from parsed options (util.settings, util.protocol)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from util.protocol import PROTOCOLS, Protocol
from util.settings import FromOptions


@dataclass(frozen=True)
class Example(FromOptions):
    size: int
    height_mm: float = field(default=40.0, metadata={"option": "height"})
    name: str = "plain"


def test_fields_come_from_the_options_and_absent_ones_keep_their_default() -> None:
    built = Example.from_options(argparse.Namespace(size=3, height=12.5, name="given", unrelated=1))
    assert built == Example(3, 12.5, "given")
    assert Example.from_options({"size": 4}) == Example(4, 40.0, "plain")  # a checkpoint's options dict
    assert Example.from_options({"size": 4, "name": None}).name == "plain"  # None: not given
    assert Example.from_options({"size": 4, "height_mm": 1.0}).height_mm == 40.0  # the option's name counts
    assert Example.from_options({"size": 4}, name="override").name == "override"


def test_a_field_without_default_must_be_given() -> None:
    with pytest.raises(ValueError, match="--size"):
        Example.from_options(argparse.Namespace(height=3.0))


def test_protocol_from_options() -> None:
    assert Protocol.from_options(argparse.Namespace(protocol="reference")) is PROTOCOLS["reference"]
    assert Protocol.from_options({}) is PROTOCOLS["healthivert"]
    with pytest.raises(ValueError, match="unknown protocol"):
        Protocol.from_options({"protocol": "other"})
