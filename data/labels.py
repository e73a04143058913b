"""VerSe vertebra ids, their names and anatomical order."""

from __future__ import annotations

import numpy as np

VERTEBRA_NAMES: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i: f"T{i - 7}" for i in range(8, 20)},
    **{i: f"L{i - 19}" for i in range(20, 25)},
    25: "L6",
    28: "T13",
}

# Position along the spine, cranial -> caudal (T13 sits between T12 and L1, L6 after L5).
_SPINE_RANK: dict[int, float] = {label: float(label) for label in range(1, 26)}
_SPINE_RANK[28] = 19.5


def vertebra_name(label: int) -> str:
    """Anatomical name of a VerSe label id (``20 -> "L1"``)."""
    try:
        return VERTEBRA_NAMES[int(label)]
    except KeyError:
        raise ValueError(f"{label} is not a VerSe vertebra label (1-25 or 28)") from None


def spine_rank(label: int) -> float:
    """Sort key that orders VerSe labels cranial -> caudal."""
    try:
        return _SPINE_RANK[int(label)]
    except KeyError:
        raise ValueError(f"{label} is not a VerSe vertebra label (1-25 or 28)") from None


def split_key(case: str, label: int) -> str:
    """The vertebra key used in file names and split JSONs: ``"<case>_<label>"``."""
    return f"{case}_{int(label)}"


def parse_key(key: str) -> tuple[str, int]:
    """Inverse of :func:`split_key` (the case id may itself contain underscores)."""
    case, sep, label = key.rpartition("_")
    if not sep or not case or not label.isdigit():
        raise ValueError(f"{key!r} is not a '<case>_<label>' vertebra key")
    return case, int(label)


# TotalSegmentator v2, task ``total``: vertebrae_S1 = 26, vertebrae_L5 = 27 ... vertebrae_L1 = 31,
# vertebrae_T12 = 32 ... vertebrae_T1 = 43, vertebrae_C7 = 44 ... vertebrae_C1 = 50 (its class map
# ``totalsegmentator.map_to_binary.class_map["total"]``). S1 has no VerSe vertebra id here (the
# sacrum is not graded); every other ``total`` structure is ignored.
TOTALSEG_TO_VERSE: dict[int, int] = {totalseg_id: 51 - totalseg_id for totalseg_id in range(27, 51)}
TOTALSEG_S1 = 26
LABEL_SCHEMES = ("verse", "totalseg")


def totalseg_to_verse(label_map: np.ndarray, body_mask: np.ndarray | None = None) -> np.ndarray:
    """VerSe ids (uint8) of a TotalSegmentator v2 ``total`` label map; non-vertebra structures -> 0.

    ``body_mask``: TotalSegmentator's ``vertebrae_body`` output on the same grid (1 = vertebral body,
    2 = intervertebral disc): the vertebra labels are then kept only on body voxels, so the mask holds
    the vertebral bodies alone (the ``total`` mask tells which vertebra each body voxel belongs to).
    """
    table = np.zeros(max(256, int(label_map.max()) + 1), dtype=np.uint8)
    for totalseg_id, verse_id in TOTALSEG_TO_VERSE.items():
        table[totalseg_id] = verse_id
    verse = table[np.asarray(label_map, dtype=np.intp)]
    if body_mask is not None:
        verse[np.asarray(body_mask) != 1] = 0
    return verse
