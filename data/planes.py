"""The two slicing planes of a straightened crop and the crop axes they use (docs/design.md, 'Straightened crops').

A crop's array axes are (superior -> inferior, anterior -> posterior, right -> left) (``data.crops.CROP_AXES``).
Every plane's 2-D slices keep the rows (crop axis 0, the height axis):

- sagittal: slice ``z`` is ``crop[:, :, z]`` (one slice per R->L position, crop axis 2); its columns
  run A->P (crop axis 1);
- coronal: slice ``y`` is ``crop[:, y, :]`` (one slice per A->P position, crop axis 1); its columns
  run R->L (crop axis 2).

An axial map of a crop (one value per (A->P, R->L) column, e.g. the RHLV height counts) has the
crop axes 1 and 2 as its axes 0 and 1.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlaneAxes:
    """Which crop axes a plane uses: the one its slices are taken along, and its slices' column axis."""

    slice_axis: int
    column_axis: int
    column_direction: str

    @property
    def axial_slice_axis(self) -> int:
        """The axis of an axial (A->P, R->L) map that the slices are taken along."""
        return self.slice_axis - 1


SAGITTAL_AXES = PlaneAxes(slice_axis=2, column_axis=1, column_direction="anterior \u2192 posterior")
CORONAL_AXES = PlaneAxes(slice_axis=1, column_axis=2, column_direction="right \u2192 left")
PLANE_AXES = {"sagittal": SAGITTAL_AXES, "coronal": CORONAL_AXES}
PLANES = tuple(PLANE_AXES)


def plane_axes(plane: str) -> PlaneAxes:
    """The crop axes of ``plane``; a ValueError naming the known planes for any other name."""
    try:
        return PLANE_AXES[plane]
    except (KeyError, TypeError):
        raise ValueError(f"unknown plane {plane!r}; expected one of {PLANES}") from None
