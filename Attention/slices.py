"""Sagittal training slices of straightened crops, their sampling and augmentation
(docs/design.md, 'Attention classifier').

The classifier sees single sagittal slices ``ct[:, :, z]`` of a crop (rows superior -> inferior,
columns anterior -> posterior), windowed with :func:`data.image_io.window_hu` to [-1, 1]. Slices are
taken from the central ``n_slices`` sagittal slices of the crop that contain at least ``min_body_px``
voxels of the target vertebra's body; a vertebra is *fractured* when its Genant grade is >=
``fracture_grade``.

With a *view* of ``view_mm`` > 0, each slice keeps only its central rows spanning ``view_mm`` (the crop
is centred on the target, so the view is the target and its discs): in a crop of five vertebrae the
label of the centre one is ambiguous when a neighbour is fractured; in the view it is not. ``view_mm``
0 keeps whole slices (the published code's input).

With a *vertebra margin* of ``margin_mm`` >= 0, every voxel farther than ``margin_mm`` from a labelled
vertebra is set to the window's lower bound (air) before windowing, so the classifier sees the
vertebrae and their endplates' surroundings, not the ribs, organs and soft tissue; ``None`` keeps the
whole slice (the published code's input). :class:`SliceInput` holds the window, the view and the
margin: one object, recorded in the classifier checkpoint, builds the slices for training and for the
attention maps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from Attention.networks import NUM_CLASSES
from data.crops import load_crop
from data.image_io import DEFAULT_WINDOW_HU, window_hu

LOGGER = logging.getLogger(__name__)


def central_sagittal_slices(n_axis: int, n_slices: int) -> tuple[int, int]:
    """``(start, stop)`` of the ``n_slices`` central indices of an axis of length ``n_axis`` (clamped)."""
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    count = min(n_slices, n_axis)
    start = n_axis // 2 - count // 2
    start = min(max(start, 0), n_axis - count)
    return start, start + count


def view_rows(n_rows: int, row_spacing_mm: float, view_mm: float) -> tuple[int, int]:
    """``(start, stop)`` of the central rows of a slice of ``n_rows`` rows (``row_spacing_mm`` each) that
    span ``view_mm`` (at least one row, at most all); ``view_mm`` <= 0: all rows."""
    if view_mm <= 0:
        return 0, n_rows
    return central_sagittal_slices(n_rows, max(1, int(round(view_mm / row_spacing_mm))))


def vertebra_neighbourhood(label_map: np.ndarray, spacing_mm: Sequence[float], margin_mm: float) -> np.ndarray:
    """Boolean mask of the voxels at most ``margin_mm`` (Euclidean, in mm with the voxel ``spacing_mm``
    per axis) from a labelled voxel (label > 0) of ``label_map``; all False when nothing is labelled."""
    labelled = np.asarray(label_map) > 0
    if not labelled.any():
        return labelled
    return distance_transform_edt(~labelled, sampling=[float(s) for s in spacing_mm]) <= float(margin_mm)


def sagittal_slices(ct_hu: np.ndarray, slice_indices: Sequence[int],
                    window: tuple[float, float] = DEFAULT_WINDOW_HU,
                    rows: tuple[int, int] | None = None, keep: np.ndarray | None = None) -> np.ndarray:
    """Windowed sagittal slices ``ct[rows[0]:rows[1], :, z]`` as float32 (N, 1, rows, D1) in [-1, 1].

    ``ct_hu`` is a crop (S->I, A->P, R->L) in HU; rows of each slice run S->I, columns A->P;
    ``rows`` None: all rows. ``keep`` (boolean, the crop's shape): voxels outside it become -1 (the
    window's lower bound).
    """
    start, stop = rows if rows is not None else (0, np.shape(ct_hu)[0])
    picked = window_hu(np.asarray(ct_hu)[start:stop, :, list(slice_indices)], window)
    if keep is not None:
        picked = np.where(np.asarray(keep)[start:stop, :, list(slice_indices)], picked, np.float32(-1.0))
    return np.ascontiguousarray(np.moveaxis(picked, 2, 0)[:, None])


@dataclass(frozen=True)
class SliceInput:
    """What the classifier sees of a crop: HU ``window`` mapped to [-1, 1], the central ``view_mm`` of
    the rows (0: all rows) and, with ``margin_mm`` not None, only the voxels within ``margin_mm`` of a
    labelled vertebra (the rest set to air)."""

    window: tuple[float, float] = DEFAULT_WINDOW_HU
    view_mm: float = 0.0
    margin_mm: float | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> SliceInput:
        """The input of a classifier checkpoint (written before the view or the margin: none)."""
        margin = checkpoint.get("vertebra_margin_mm")
        return cls((float(checkpoint["window_hu"][0]), float(checkpoint["window_hu"][1])),
                   float(checkpoint.get("view_mm", 0.0)), None if margin is None else float(margin))

    def rows(self, n_rows: int, row_spacing_mm: float) -> tuple[int, int]:
        """``(start, stop)`` of the viewed rows of a crop with ``n_rows`` rows ``row_spacing_mm`` apart."""
        return view_rows(n_rows, row_spacing_mm, self.view_mm)

    def keep_mask(self, label_map: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray | None:
        """The voxels the classifier sees (None: all)."""
        if self.margin_mm is None:
            return None
        return vertebra_neighbourhood(label_map, spacing_mm, self.margin_mm)

    def slices(self, ct_hu: np.ndarray, label_map: np.ndarray, spacing_mm: Sequence[float],
               slice_indices: Sequence[int], rows: tuple[int, int] | None = None) -> np.ndarray:
        """Classifier input (N, 1, rows, D1) of the sagittal slices ``slice_indices`` of a crop (S->I, A->P,
        R->L; HU and labels), on ``rows`` (default: the view centred in the crop)."""
        if rows is None:
            rows = self.rows(np.shape(ct_hu)[0], float(spacing_mm[0]))
        return sagittal_slices(ct_hu, slice_indices, self.window, rows, self.keep_mask(label_map, spacing_mm))


def body_slice_indices(label_map: np.ndarray, label: int, start: int, stop: int, min_body_px: int) -> list[int]:
    """Sagittal slices in [start, stop) holding at least ``min_body_px`` voxels of ``label``."""
    counts = (np.asarray(label_map)[:, :, start:stop] == label).sum(axis=(0, 1))
    return [start + int(i) for i in np.flatnonzero(counts >= min_body_px)]


@dataclass
class VertebraSlices:
    """Training slices of one vertebra: windowed float16 (N, D0, D1) and its class."""

    key: str
    grade: int
    fractured: bool
    slices: np.ndarray


def load_vertebra_slices(dataroot: str | Path, grades: dict[str, int], fracture_grade: int, n_slices: int,
                         min_body_px: int, slice_input: SliceInput) -> tuple[list[VertebraSlices], list[str]]:
    """Classifier input slices (``slice_input``) of every vertebra in ``grades`` (key -> Genant grade).

    Returns the loaded vertebrae and the keys skipped because no central slice holds
    ``min_body_px`` voxels of the body. A missing or unreadable crop raises an error naming the
    file (callers check the list first with ``data.crops.require_listed_crops``).
    """
    vertebrae: list[VertebraSlices] = []
    skipped: list[str] = []
    for key, grade in tqdm(sorted(grades.items()), desc="loading crops", unit="crop", leave=False):
        crop = load_crop(dataroot, key)
        start, stop = central_sagittal_slices(crop.ct_hu.shape[2], n_slices)
        indices = body_slice_indices(crop.label_map, crop.label, start, stop, min_body_px)
        if not indices:
            LOGGER.warning("%s: no central sagittal slice has %d body voxels; vertebra skipped", key, min_body_px)
            skipped.append(key)
            continue
        slices = slice_input.slices(crop.ct_hu, crop.label_map, crop.spacing_mm, indices)[:, 0].astype(np.float16)
        vertebrae.append(VertebraSlices(key, grade, grade >= fracture_grade, slices))
    shapes = {v.slices.shape[1:] for v in vertebrae}
    if len(shapes) > 1:
        examples = {v.slices.shape[1:]: v.key for v in vertebrae}
        raise ValueError(f"{dataroot}: crops differ in sagittal slice shape: {examples}; straighten them to one size")
    return vertebrae, skipped


class SliceDataset(Dataset):
    """All slices of a list of vertebrae; item = (image (1, D0, D1) float32, class, vertebra index)."""

    def __init__(self, vertebrae: list[VertebraSlices]) -> None:
        self.vertebrae = vertebrae
        self.index = [(v, s) for v, vert in enumerate(vertebrae) for s in range(len(vert.slices))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, int]:
        vertebra, slice_pos = self.index[item]
        vert = self.vertebrae[vertebra]
        image = torch.from_numpy(vert.slices[slice_pos].astype(np.float32))[None]
        return image, int(vert.fractured), vertebra


def sample_weights(dataset: SliceDataset, balance_classes: bool) -> torch.Tensor:
    """Per-slice sampling weights: every vertebra gets equal mass (split equally between the
    two classes when ``balance_classes``), shared by its slices."""
    fractured = np.array([v.fractured for v in dataset.vertebrae])
    vertebra_mass = np.ones(len(fractured))
    if balance_classes:
        for cls in (False, True):
            vertebra_mass[fractured == cls] = 1.0 / max(int((fractured == cls).sum()), 1)
    return torch.tensor(
        [vertebra_mass[v] / len(dataset.vertebrae[v].slices) for v, _ in dataset.index], dtype=torch.double
    )


def loss_class_weights(vertebrae: list[VertebraSlices]) -> torch.Tensor:
    """Cross-entropy class weights inversely proportional to the vertebra count of each class."""
    counts = np.bincount([int(v.fractured) for v in vertebrae], minlength=NUM_CLASSES).astype(np.float64)
    weights = counts.sum() / (NUM_CLASSES * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def random_vertical_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of (B, C, H, W) superior <-> inferior with probability 1/2.

    A flipped column of vertebrae is still a plausible spine and a height loss stays a height
    loss, so the label is kept; anterior/posterior is never flipped (wedges are anterior).
    """
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(2), images)


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator, fill: float = -1.0) -> torch.Tensor:
    """Translate each image of (B, C, H, W) by up to ``max_shift`` px per axis, padding with ``fill``."""
    if max_shift <= 0:
        return images
    _, _, height, width = images.shape
    padded = nn.functional.pad(images, (max_shift,) * 4, value=fill)
    offsets = torch.randint(0, 2 * max_shift + 1, (images.shape[0], 2), generator=generator)
    return torch.stack([
        padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets.tolist())
    ])


__all__ = ["SliceDataset", "SliceInput", "VertebraSlices", "body_slice_indices", "central_sagittal_slices",
           "load_vertebra_slices", "loss_class_weights", "random_shift", "random_vertical_flip", "sagittal_slices",
           "sample_weights", "vertebra_neighbourhood", "view_rows"]
