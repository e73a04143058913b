"""Generation quality of synthesized vertebrae (docs/design.md, 'Generation metrics').

On healthy (grade 0) val vertebrae, where the synthesized vertebra should equal the
original: PSNR and SSIM (scikit-image, data range of the original image compared)
of the whole slice and of the target's rows, over the slices of the central 4/5 of
the target's extent (``data.masking.target_slices``, the selection training and synthesis
use) that hold more than ``min_slice_voxels`` target voxels; Dice, IoU and relative
volume difference |V_syn - V_ori| / V_ori of the target label over the whole crop.

Inputs: ``<dataroot>/{CT,label}/<key>.nii.gz`` (docs/design.md, 'Straightened crops') and
``<fake_dir>/{CT_fake,label_fake}/<key>.nii.gz`` (docs/design.md, 'Synthesis outputs and provenance'), both CTs in HU.
Sagittal slices are ``[:, :, z]``, coronal slices ``[:, y, :]``; rows are axis 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from tqdm import tqdm

from data.crops import crop_paths, require_listed_crops
from data.image_io import ImageIOError, check_same_grid, load_ct, load_mask
from data.labels import parse_key
from data.masking import MIN_ISLAND_VOXELS, plane_slab, target_slices
from data.planes import PLANES
from data.synthesis_layout import OutputLayout
from util.settings import FromOptions

IMAGE_METRICS = ("PSNR", "SSIM", "PSNR_target_rows", "SSIM_target_rows")
OVERLAP_METRICS = ("Dice", "IoU", "RVD")
GENERATION_COLUMNS = ["Vertebra", "Label", "Dataset", "n_slices", *IMAGE_METRICS, *OVERLAP_METRICS]
SSIM_MIN_SIDE = 7  # scikit-image's default SSIM window


class GenerationError(ValueError):
    """A vertebra whose generation metrics cannot be computed; the message names the file."""


@dataclass(frozen=True)
class GenerationSettings(FromOptions):
    """What the generation metrics score: ``plane`` slices of the vertebrae of ``splits`` with Genant
    ``grades``; slices with more than ``min_slice_voxels`` target voxels; ``min_island_voxels``: 3-D target
    islands that do not count for the slice range (as in training and synthesis)."""

    plane: str = "sagittal"
    splits: tuple[str, ...] = ("val",)
    grades: tuple[int, ...] = (0,)
    min_slice_voxels: int = 400
    min_island_voxels: int = MIN_ISLAND_VOXELS

    def __post_init__(self) -> None:
        if self.plane not in PLANES:
            raise ValueError(f"plane {self.plane!r}: expected one of {PLANES}")
        object.__setattr__(self, "splits", tuple(str(name) for name in self.splits))
        object.__setattr__(self, "grades", tuple(int(grade) for grade in self.grades))


def image_scores(original: np.ndarray, synthesized: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of two 2D images with the original's data range.

    NaN when undefined: constant original, identical images (PSNR), a side shorter than
    the 7-pixel SSIM window (SSIM).
    """
    data_range = float(original.max() - original.min())
    if data_range <= 0:
        return math.nan, math.nan
    with np.errstate(divide="ignore"):
        psnr = float(peak_signal_noise_ratio(original, synthesized, data_range=data_range))
    ssim = math.nan
    if min(original.shape) >= SSIM_MIN_SIDE:
        ssim = float(structural_similarity(original, synthesized, data_range=data_range))
    return (psnr if math.isfinite(psnr) else math.nan), ssim


def overlap_scores(original: np.ndarray, synthesized: np.ndarray) -> dict[str, float]:
    """Dice, IoU and relative volume difference |V_syn - V_ori| / V_ori of two boolean masks."""
    original = np.asarray(original, dtype=bool)
    synthesized = np.asarray(synthesized, dtype=bool)
    intersection = np.count_nonzero(original & synthesized)
    volume_original, volume_synthesized = np.count_nonzero(original), np.count_nonzero(synthesized)
    union = volume_original + volume_synthesized - intersection
    if volume_original == 0:
        raise GenerationError("the original target is empty")
    return {"Dice": 2.0 * intersection / (volume_original + volume_synthesized), "IoU": intersection / union,
            "RVD": abs(volume_synthesized - volume_original) / volume_original}


def _mean_finite(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def scored_slices(original_label: np.ndarray, label: int, plane: str = GenerationSettings.plane,
                  min_island_voxels: int = GenerationSettings.min_island_voxels) -> np.ndarray:
    """Indices along the plane's slicing axis of the slices scored for ``label`` (the central range of
    ``data.masking.target_slices``; empty when the target is absent)."""
    selected = target_slices(plane_slab(np.asarray(original_label), plane), label, min_island_voxels)
    return np.arange(0) if selected is None else selected.indices


def generation_metrics(original_ct: np.ndarray, synthesized_ct: np.ndarray, original_label: np.ndarray,
                       synthesized_label: np.ndarray, label: int, plane: str = GenerationSettings.plane,
                       min_slice_voxels: int = GenerationSettings.min_slice_voxels,
                       min_island_voxels: int = GenerationSettings.min_island_voxels) -> dict[str, float]:
    """Metrics of one vertebra (crop arrays (S->I, A->P, R->L), CT in HU).

    Returns ``n_slices`` and the means over qualifying slices of each image metric, plus
    Dice/IoU/RVD. Slices where a metric is undefined (constant original, target rows
    fewer than 7) are left out of that metric's mean.
    """
    shapes = {a.shape for a in (original_ct, synthesized_ct, original_label, synthesized_label)}
    if len(shapes) != 1:
        raise GenerationError(f"crop shapes differ: {sorted(shapes)}")
    original_target = np.asarray(original_label) == label
    scores = overlap_scores(original_target, np.asarray(synthesized_label) == label)
    per_slice: dict[str, list[float]] = {name: [] for name in IMAGE_METRICS}
    indices = scored_slices(original_label, label, plane, min_island_voxels)
    target_stack = plane_slab(original_target, plane)[indices]
    original_slices = plane_slab(np.asarray(original_ct, dtype=np.float64), plane)[indices]
    synthesized_slices = plane_slab(np.asarray(synthesized_ct, dtype=np.float64), plane)[indices]
    used = 0
    for target, original, synthesized in zip(target_stack, original_slices, synthesized_slices):
        if np.count_nonzero(target) <= min_slice_voxels:
            continue
        used += 1
        rows = np.flatnonzero(target.any(axis=1))
        whole = image_scores(original, synthesized)
        band = image_scores(original[rows[0]: rows[-1] + 1], synthesized[rows[0]: rows[-1] + 1])
        for name, value in zip(IMAGE_METRICS, (*whole, *band)):
            per_slice[name].append(value)
    if used == 0:
        raise GenerationError(f"no {plane} slice in the central 4/5 of label {label} has more than "
                              f"{min_slice_voxels} target voxels")
    return {"n_slices": used, **{name: _mean_finite(values) for name, values in per_slice.items()}, **scores}


@dataclass(frozen=True)
class GenerationPaths:
    """The four crops compared for one vertebra."""

    original_ct: Path
    original_label: Path
    synthesized_ct: Path
    synthesized_label: Path


def generation_paths(dataroot: str | Path, fake_dir: str | Path, key: str) -> GenerationPaths:
    """Original crop paths and synthesized ones (``CT_fake``/``label_fake``;
    docs/design.md, 'Straightened crops' and 'Synthesis outputs and provenance')."""
    original = crop_paths(dataroot, key)
    fake = OutputLayout(Path(fake_dir))
    return GenerationPaths(original.ct, original.label, fake.ct(key), fake.label(key))


def metrics_for_key(dataroot: str | Path, fake_dir: str | Path, key: str,
                    settings: GenerationSettings = GenerationSettings()) -> dict[str, float]:
    """Read the four crops of ``key`` (checked to share one grid) and compute its metrics."""
    paths = generation_paths(dataroot, fake_dir, key)
    for path in (paths.original_ct, paths.original_label, paths.synthesized_ct, paths.synthesized_label):
        if not path.is_file():
            raise GenerationError(f"{path}: file not found")
    volumes = [load_ct(paths.original_ct), load_mask(paths.original_label),
               load_ct(paths.synthesized_ct), load_mask(paths.synthesized_label)]
    for other in volumes[1:]:
        check_same_grid(volumes[0], other)
    try:
        return generation_metrics(volumes[0].array, volumes[2].array, volumes[1].array, volumes[3].array,
                                  parse_key(key)[1], settings.plane, settings.min_slice_voxels,
                                  settings.min_island_voxels)
    except GenerationError as err:
        raise GenerationError(f"{paths.synthesized_ct} vs {paths.original_ct}: {err}") from None


def selected_keys(split: dict[str, dict[str, int]], splits: tuple[str, ...] = GenerationSettings.splits,
                  grades: tuple[int, ...] = GenerationSettings.grades) -> list[tuple[str, str, int]]:
    """``(key, split, grade)`` of the vertebrae to evaluate (default: grade 0 of val;
    docs/design.md, 'Generation metrics')."""
    return [(key, name, grade) for name in splits for key, grade in split.get(name, {}).items() if grade in grades]


def generation_table(dataroot: str | Path, fake_dir: str | Path, split: dict[str, dict[str, int]],
                     settings: GenerationSettings = GenerationSettings(), progress: bool = True,
                     listed_in: str | Path = "the split") -> tuple[pd.DataFrame, list[str]]:
    """Per-vertebra metrics table and the failure messages (one per vertebra that failed).

    A selected vertebra without an original crop stops the run before any work, with the full list
    (``data.crops.require_listed_crops``); a missing or unusable synthesized crop is a failure.
    """
    rows, failures = [], []
    selected = selected_keys(split, settings.splits, settings.grades)
    require_listed_crops(dataroot, [key for key, _, _ in selected], listed_in)
    for key, name, grade in tqdm(selected, desc="generation metrics", unit="vertebra", disable=not progress):
        try:
            metrics = metrics_for_key(dataroot, fake_dir, key, settings)
        except (GenerationError, ImageIOError, OSError, ValueError) as err:
            failures.append(f"{key}: {err}")
            continue
        rows.append({"Vertebra": key, "Label": grade, "Dataset": name, **metrics})
    return pd.DataFrame(rows, columns=GENERATION_COLUMNS), failures


def summarize(table: pd.DataFrame) -> dict:
    """Mean and standard deviation over vertebrae of every metric (NaN-free vertebrae only per metric)."""
    metrics = [*IMAGE_METRICS, *OVERLAP_METRICS]
    return {"n_vertebrae": int(len(table)),
            "mean": {m: float(table[m].mean()) if len(table) else math.nan for m in metrics},
            "std": {m: float(table[m].std(ddof=0)) if len(table) else math.nan for m in metrics}}
