"""Ablation switches of HealthiVert-GAN's modules (the paper's EEM, SHRM and HGAM; iterative synthesis).

Each module is turned off by one flag of ``train.py`` (``--no_eem``, ``--no_shrm``, ``--no_hgam``, saved
with the checkpoint's options) or of ``eval_3d_sagittal_twostage.py`` (``--no_iterative``). Code asks
the fields of :class:`ModuleSwitches`, never the flags:

- eem: the Sobel edge loss of the fine target segmentation (off: the term is zero, no gradient);
- shrm: the predicted heights h1, h2 (off: the composition uses the band height M, and the relative
  height errors leave the loss);
- hgam: the Grad-CAM++ attention map (off: the generator receives an all-zero map, in training and,
  read from the checkpoint, at synthesis);
- iterative: synthesize the upper and lower neighbours before the target (off: the target only, the
  neighbours stay as they are in the crop).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

MODEL_SWITCH_FLAGS = {
    "no_eem": "EEM off: no Sobel edge loss on the fine target segmentation",
    "no_shrm": "SHRM off: the generated height is the band height (composition) and the height errors leave the loss",
    "no_hgam": "HGAM off: the generator's attention input is all zeros (also at synthesis with this checkpoint)",
}
SYNTHESIS_SWITCH_FLAG = "no_iterative"


@dataclass(frozen=True)
class ModuleSwitches:
    """Which modules are on (all by default)."""

    eem: bool = True
    shrm: bool = True
    hgam: bool = True
    iterative: bool = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | argparse.Namespace | None,
                     synthesis: argparse.Namespace | None = None) -> ModuleSwitches:
        """Switches of a model's (checkpoint or parsed) ``options``; ``iterative`` from ``synthesis``'s
        ``--no_iterative`` (the synthesis command line, not the checkpoint)."""
        values = vars(options) if isinstance(options, argparse.Namespace) else dict(options or {})
        return cls(eem=not values.get("no_eem", False), shrm=not values.get("no_shrm", False),
                   hgam=not values.get("no_hgam", False),
                   iterative=not bool(getattr(synthesis, SYNTHESIS_SWITCH_FLAG, False)))

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)


def add_model_switches(parser: argparse.ArgumentParser) -> None:
    """Add ``--no_eem``, ``--no_shrm``, ``--no_hgam`` (store_true) unless already defined."""
    for flag, help_text in MODEL_SWITCH_FLAGS.items():
        if f"--{flag}" not in parser._option_string_actions:
            parser.add_argument(f"--{flag}", action="store_true", help=help_text)


def add_synthesis_switch(parser: argparse.ArgumentParser) -> None:
    """Add ``--no_iterative``: synthesize the target only, leave the neighbours as they are."""
    parser.add_argument(f"--{SYNTHESIS_SWITCH_FLAG}", action="store_true",
                        help="iterative synthesis off: synthesize the target only; the neighbours are left as they are")
