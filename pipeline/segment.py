"""Vertebra masks from TotalSegmentator (optional dependency) for ``predict.py --segment``."""

from __future__ import annotations

from pathlib import Path

TOTALSEG_VERTEBRAE = [f"vertebrae_{name}" for name in
                      [*(f"C{i}" for i in range(1, 8)), *(f"T{i}" for i in range(1, 13)),
                       *(f"L{i}" for i in range(1, 6))]]
HOW_TO_GET_A_MASK = ("install it (pip install TotalSegmentator; its weights download on first use) "
                     "or run it elsewhere: "
                     "TotalSegmentator -i CT -o seg.nii.gz --ml --roi_subset vertebrae_L1 ... , then pass "
                     "--mask seg.nii.gz --label_scheme totalseg")


class SegmentationUnavailable(RuntimeError):
    """TotalSegmentator is missing or could not run; the message says how to get a mask instead."""


def segment_vertebrae(ct: Path, out: Path, gpu_ids: str = "-1") -> Path:
    """Run TotalSegmentator's ``total`` task restricted to the vertebrae on ``ct``; returns the label map written to
    ``out``.

    The map holds TotalSegmentator v2 ids (``--label_scheme totalseg``). Raises
    :class:`SegmentationUnavailable` when TotalSegmentator is not importable or fails (e.g. no weights).
    """
    try:
        from totalsegmentator.python_api import totalsegmentator
    except ImportError:
        raise SegmentationUnavailable(f"{ct}: --segment needs TotalSegmentator, which is not installed; "
                                      f"{HOW_TO_GET_A_MASK}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        totalsegmentator(str(ct), str(out), ml=True, task="total", roi_subset=TOTALSEG_VERTEBRAE,
                         device="cpu" if str(gpu_ids).strip() in ("-1", "") else "gpu")
    except Exception as err:  # its failures (missing weights, no network) come as many exception types
        raise SegmentationUnavailable(f"{ct}: TotalSegmentator failed ({type(err).__name__}: "
                                      f"{' '.join(str(err).split())[:200]}); {HOW_TO_GET_A_MASK}") from None
    if not out.is_file():
        raise SegmentationUnavailable(f"{ct}: TotalSegmentator wrote no mask to {out}; {HOW_TO_GET_A_MASK}")
    return out
