"""Model registry (pix2pix style): ``--model healthivert`` -> :class:`HealthiVertModel`,
``--model aotgan`` -> :class:`AOTGANModel` (the paper's inpainting baseline).

``create_model(opt)`` builds the model named by ``opt.model``; ``get_option_setter(name)`` returns its
``modify_commandline_options(parser, is_train)`` so option parsers can add the model's flags.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from models.aotgan_model import AOTGANModel
from models.base_model import BaseModel
from models.healthivert_model import HealthiVertModel
from util.settings import FromOptions

MODELS: dict[str, type[BaseModel]] = {"healthivert": HealthiVertModel, "aotgan": AOTGANModel}
MODEL_ALIASES = {"pix2pix": "healthivert"}  # the published code's --model name for the same model


@dataclass(frozen=True)
class ModelChoice(FromOptions):
    """Which registered model to build: ``--model``, a key of :data:`MODELS` or :data:`MODEL_ALIASES`."""

    model: str = "healthivert"


def find_model_using_name(name: str) -> type[BaseModel]:
    """The model class registered as ``name``."""
    try:
        return MODELS[MODEL_ALIASES.get(name.lower(), name.lower())]
    except KeyError:
        raise ValueError(f"unknown model {name!r} (choose from: {', '.join(sorted(MODELS))})") from None


def get_option_setter(name: str) -> Callable[[argparse.ArgumentParser, bool], argparse.ArgumentParser]:
    """``modify_commandline_options(parser, is_train)`` of the model registered as ``name``."""
    return find_model_using_name(name).modify_commandline_options


def create_model(opt: argparse.Namespace) -> BaseModel:
    """Instantiate the model named ``opt.model`` (absent: :class:`ModelChoice`'s default) from the options."""
    return find_model_using_name(ModelChoice.from_options(opt).model)(opt)


__all__ = ["MODELS", "AOTGANModel", "BaseModel", "HealthiVertModel", "ModelChoice", "create_model",
           "find_model_using_name", "get_option_setter"]
