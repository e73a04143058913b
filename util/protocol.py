"""The two protocols: ``healthivert`` (default, with this project's fixes) and ``reference`` (the published code).

``--protocol reference`` reproduces what the published HealthiVert-GAN code does wherever that is not a
crash or a plain bug, so its numbers can be reproduced; ``--protocol healthivert`` keeps the
documented fixes (README, "Two protocols"). Every switch is one field of :class:`Protocol`; code asks
the field, never the protocol's name. Behaviour that is the same in both (clamped CT heads, band
fill -1, per-sample contextual-attention masks, soft-mask edge loss and D2) has no field.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from util.settings import option_values

PROTOCOL_NAMES = ("healthivert", "reference")
DEFAULT_PROTOCOL = "healthivert"


@dataclass(frozen=True)
class Protocol:
    """Settings that differ between the protocols.

    inference_mask_extra_row: at inference the band mask also marks row band_top + M (41 rows for
        M = 40; the CT keeps original row x2 there), as the reference's ``run_model``; training always
        marks M rows.
    recentre_neighbours: a neighbour step moves each slice so the neighbour's centre row is the crop's
        centre row, as the generator saw in training (the reference synthesizes neighbours in place).
    compose_at_band_centre: generated rows are read shifted by band_centre - (x1 + x2) // 2, so a
        vertebra painted on a band clamped at the image border lands where the composition puts it
        (the reference reads the generated rows at the composed rows).
    l1_divided_by_batch: the band-normalised L1 is further divided by the batch size, as the
        reference's ``mean * H * W / band pixels`` does (its hidden 1/B; identical at batch 1).
    truncate_to_grey: iterative synthesis truncates the CT to uint8 grey (``--hu_window`` mapped to
        0..255, clipped) and the attention map to k/255 before every step, as the reference casts its
        float inputs with ``astype(np.uint8)``; the CT outside the window is lost.
    neighbour_threshold_px: a neighbour is synthesized where it has more than 200 pixels whatever the
        pixel size (the reference); otherwise more than 200 mm².
    neighbours_same_split: the training neighbour mask covers the patient's healthy vertebrae listed in
        the item's own split (the reference); otherwise those of every split.
    target_in_neighbour_mask: the training neighbour mask also marks target pixels outside the band
        (the target's last row x2, which reappears at row band_top + M), as the reference's
        ``normal_vert``; otherwise the target is never a neighbour.
    """

    name: str
    inference_mask_extra_row: bool
    recentre_neighbours: bool
    compose_at_band_centre: bool
    l1_divided_by_batch: bool
    truncate_to_grey: bool
    neighbour_threshold_px: bool
    neighbours_same_split: bool
    target_in_neighbour_mask: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_options(cls, options: argparse.Namespace | Mapping[str, Any] | None) -> Protocol:
        """The protocol named by ``options.protocol`` (a Namespace or a dict; absent or ``None``: healthivert)."""
        return get_protocol(option_values(options).get("protocol"))


PROTOCOLS: dict[str, Protocol] = {
    "healthivert": Protocol("healthivert", inference_mask_extra_row=False, recentre_neighbours=True,
                            compose_at_band_centre=True, l1_divided_by_batch=False, truncate_to_grey=False,
                            neighbour_threshold_px=False, neighbours_same_split=False, target_in_neighbour_mask=False),
    "reference": Protocol("reference", inference_mask_extra_row=True, recentre_neighbours=False,
                          compose_at_band_centre=False, l1_divided_by_batch=True, truncate_to_grey=True,
                          neighbour_threshold_px=True, neighbours_same_split=True, target_in_neighbour_mask=True),
}


def get_protocol(name: str | None) -> Protocol:
    """The :class:`Protocol` called ``name`` (``None``: the default, healthivert)."""
    key = DEFAULT_PROTOCOL if name is None else str(name)
    if key not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r} (choose from: {', '.join(PROTOCOL_NAMES)})")
    return PROTOCOLS[key]


def check_protocol(protocol: str) -> str:
    """Return ``protocol`` or raise ``ValueError`` naming the allowed values."""
    return get_protocol(protocol).name


def add_protocol_argument(parser: argparse.ArgumentParser, reference_means: str) -> None:
    """Add ``--protocol healthivert|reference``; ``reference_means`` says what ``reference`` changes in this step."""
    parser.add_argument("--protocol", choices=PROTOCOL_NAMES, default=DEFAULT_PROTOCOL,
                        help=f"healthivert: this implementation with its fixes; reference: the published code's "
                             f"behaviour where it is not a crash or a plain bug ({reference_means}; README, "
                             f"'Two protocols')")
