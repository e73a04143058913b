"""Masking and composition settings of one trained model for the synthesis (docs/design.md, 'Iterative synthesis').

The settings come from the checkpoint's training options (``mask_height`` mm, ``hu_window``,
``min_component_px``, module switches), falling back to the run's flags (:class:`SynthesisFlags`), then the
defaults; the band height is converted to rows with the crop's row spacing and the neighbour presence
threshold (200 mm²) to pixels with the slice's pixel area.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from data.image_io import DEFAULT_WINDOW_HU
from data.masking import MIN_COMPONENT_PX, mask_height_rows
from data.planes import plane_axes
from models.module_switches import ModuleSwitches
from util.protocol import PROTOCOLS, Protocol, get_protocol

NEIGHBOUR_MIN_MM2 = 200.0  # a neighbour is synthesized in a slice where its area (mm²) exceeds this
NEIGHBOUR_MIN_PX = 200  # the same threshold in pixels at 1 mm x 1 mm pixels (the reference's 200 pixels)


@dataclass(frozen=True)
class SynthesisSettings:
    """Masking and composition parameters of one trained model.

    mask_height_px: band height M in rows (``--mask_height`` mm / row spacing).
    hu_window: CT window (HU) mapped to [-1, 1], as in training.
    min_component_px: target components smaller than this (pixels per slice) are ignored.
    neighbour_min_px: a neighbour is synthesized in slices where it has more pixels than this
        (``NEIGHBOUR_MIN_MM2`` over the slice's pixel area, see ``neighbour_min_pixels``).
    protocol: ``util.protocol.Protocol`` (neighbour re-centring, 41-row mask, composition centre,
        uint8 grey truncation between steps).
    switches: ``models.module_switches.ModuleSwitches``: without HGAM the generator gets an all-zero
        map, without SHRM the composition uses the band height, without iterative synthesis only the
        target is synthesized.
    """

    mask_height_px: int
    hu_window: tuple[float, float] = DEFAULT_WINDOW_HU
    min_component_px: int = MIN_COMPONENT_PX
    neighbour_min_px: float = NEIGHBOUR_MIN_PX
    protocol: Protocol = PROTOCOLS["healthivert"]
    switches: ModuleSwitches = ModuleSwitches()


def neighbour_min_pixels(pixel_area_mm2: float) -> float:
    """Neighbour presence threshold in pixels: ``NEIGHBOUR_MIN_MM2`` (200 mm²) over the pixel area (mm²).

    The reference counts 200 pixels whatever the spacing; at 1 mm x 1 mm pixels this is the same.
    """
    if pixel_area_mm2 <= 0:
        raise ValueError(f"pixel area must be positive, got {pixel_area_mm2} mm²")
    return NEIGHBOUR_MIN_MM2 / pixel_area_mm2


def plane_pixel_area_mm2(spacing_mm: Sequence[float], plane: str) -> float:
    """Area (mm²) of one pixel of a ``plane`` slice of a crop with (S->I, A->P, R->L) ``spacing_mm``:
    rows are S->I, columns A->P (sagittal) or R->L (coronal)."""
    return float(spacing_mm[0]) * float(spacing_mm[plane_axes(plane).column_axis])


@dataclass(frozen=True)
class SynthesisFlags:
    """The run's flags that shape every step: ``--protocol`` (name, ``None``: the default), ``--no_iterative``
    (``iterative`` False), and the masking flags (``--mask_height`` mm, ``--hu_window`` HU,
    ``min_component_px``) used only where a checkpoint's options lack them (``None``: not given)."""

    protocol: str | None = None
    iterative: bool = True
    mask_height_mm: float | None = None
    hu_window: tuple[float, float] | None = None
    min_component_px: int | None = None


def settings_for(options: dict[str, Any], row_spacing_mm: float, flags: SynthesisFlags = SynthesisFlags(),
                 pixel_area_mm2: float = 1.0) -> SynthesisSettings:
    """Masking settings of a model: its training options (``mask_height`` mm, ``hu_window``,
    ``min_component_px``), falling back to the run's ``flags``, then the defaults; the protocol is
    ``flags.protocol``; the module switches are the checkpoint's ``no_eem``/``no_shrm``/``no_hgam`` and
    the run's ``--no_iterative``. The neighbour threshold is 200 mm² in pixels of ``pixel_area_mm2``
    (``neighbour_min_pixels``), or 200 pixels under ``--protocol reference``."""
    def option(name: str, run_value: Any, default: Any) -> Any:
        if options.get(name) is not None:
            return options[name]
        return run_value if run_value is not None else default

    window = option("hu_window", flags.hu_window, DEFAULT_WINDOW_HU)
    protocol = get_protocol(flags.protocol)
    neighbour_px = NEIGHBOUR_MIN_PX if protocol.neighbour_threshold_px else neighbour_min_pixels(pixel_area_mm2)
    switches = replace(ModuleSwitches.from_options(options), iterative=flags.iterative)
    return SynthesisSettings(mask_height_rows(float(option("mask_height", flags.mask_height_mm, 40.0)), row_spacing_mm),
                             (float(window[0]), float(window[1])),
                             int(option("min_component_px", flags.min_component_px, MIN_COMPONENT_PX)),
                             neighbour_px, protocol, switches)
