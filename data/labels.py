"""VerSe vertebra ids, their names and anatomical order."""

from __future__ import annotations

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
