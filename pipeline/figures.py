"""The demo report's figures (matplotlib, no pyplot state): straightened crops with their attention
maps, original vs pseudo-healthy slices, RHLV against the phantom truth, training losses.

Image axes follow the crop contract (docs/design.md, 'Straightened crops'): a sagittal slice
``crop[:, :, z]`` is shown with row 0 (superior) at the top and anterior on the left.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from Attention.localisation import localise
from data.crops import load_crop
from data.image_io import ImageIOError, load_ct, load_mask
from data.synthesis_layout import OutputLayout
from evaluation.genant import GENANT_THRESHOLDS
from evaluation.phantom_truth import RHLV_COLUMN_OF_REGION, accuracy_summary
from pipeline.html import format_value as fmt
from pipeline.report_data import Example

CT_DISPLAY_WINDOW_HU = (-300.0, 1200.0)
ATTENTION_ON_TARGET = 0.5  # an attention map "misses" the target when less of its mass lies on the body
REGION_COLOURS = {"anterior": "tab:red", "middle": "tab:green", "posterior": "tab:blue"}
LOSS_TERMS = ("G_L1", "coarse_Dice", "G_Dice", "edge", "h", "G_GAN")  # the generator terms of loss_log.csv


def _label_colormap() -> ListedColormap:
    colours = colormaps["tab10"](np.arange(10))
    colours[0] = (0.0, 0.0, 0.0, 1.0)
    return ListedColormap(colours)


def _label_display(label_slice: np.ndarray) -> np.ndarray:
    """VerSe ids mapped to 1..9 colour indices (0 = background) so neighbouring bodies differ."""
    return np.where(label_slice > 0, (label_slice.astype(int) - 1) % 9 + 1, 0)


def _show(axis: Any, image: np.ndarray, spacing_mm: Sequence[float], title: str, **kwargs: Any) -> None:
    """A sagittal slice (rows S->I, columns A->P) with its physical aspect ratio."""
    axis.imshow(image, aspect=spacing_mm[0] / spacing_mm[1], interpolation="nearest", **kwargs)
    axis.set_title(title, fontsize=8)
    axis.set_xticks([])
    axis.set_yticks([])


def attention_on_target(cam_slice: np.ndarray, target: np.ndarray) -> float | None:
    """Fraction of an attention slice's mass on the target body, 2 pixels of slack
    (``Attention.localisation.localise``; ``None`` for an all-zero map)."""
    return localise(cam_slice, target).mass_share


def attention_title(cam_slice: np.ndarray, target: np.ndarray, fractured: bool = True,
                    fractures: np.ndarray | None = None) -> str:
    """Panel title: the map's maximum, how much of it lies on the target body and whether its peak does
    (``Attention.localisation.localise``); for a ``fractured`` target flagged when less than half of it
    or its peak misses the body (a healthy target's map should be weak, wherever it lies). Given the mask
    of every fractured body in the slice (``fractures``), a peak on a fractured neighbour is named as such
    and is not a miss: the maps mark every fracture of the crop."""
    measure = localise(cam_slice, target, fractured=fractures)
    if measure.mass_share is None:
        return "attention: none (all zero)"
    if measure.peak_in_target:
        peak = "peak on target"
    elif measure.peak_on_fracture:
        peak = "peak on a fractured neighbour"
    else:
        peak = "peak off target"
    if fractures is None:
        misses = fractured and (measure.mass_share < ATTENTION_ON_TARGET or not measure.peak_in_target)
    else:
        misses = fractured and not measure.peak_on_fracture
    flag = "  MISSES TARGET" if misses else ""
    return f"attention max {float(np.max(cam_slice)):.2f}, {peak}\n{100 * measure.mass_share:.0f}% on target{flag}"


def attention_figure(dataroot: Path, heatmap_dir: Path, examples: Sequence[Example],
                     fractured_labels: Mapping[str, set[int]] | None = None) -> Figure | None:
    """Mid-sagittal slice of each example's straightened CT crop, with its attention map overlaid
    (titled with the share of the map on the target body; ``fractured_labels``, case -> labels of its
    fractured vertebrae, names a peak on a fractured neighbour)."""
    panels = []
    for example in examples:
        try:
            crop = load_crop(dataroot, example.key)
        except (ImageIOError, OSError, ValueError):
            continue
        cam_path = heatmap_dir / f"{example.key}.nii.gz"
        cam = load_ct(cam_path).array if cam_path.is_file() else np.zeros_like(crop.ct_hu)
        panels.append((example, crop, cam))
    if not panels:
        return None
    figure = Figure(figsize=(2.6 * len(panels), 5.4))
    for column, (example, crop, cam) in enumerate(panels):
        z = crop.ct_hu.shape[2] // 2
        spacing = crop.spacing_mm
        ct_axis = figure.add_subplot(2, len(panels), column + 1)
        _show(ct_axis, crop.ct_hu[:, :, z], spacing, example.title.replace(", ", "\n", 1), cmap="gray",
              vmin=CT_DISPLAY_WINDOW_HU[0], vmax=CT_DISPLAY_WINDOW_HU[1])
        ct_axis.contour(crop.label_map[:, :, z] == crop.label, levels=[0.5], colors="yellow", linewidths=0.8)
        cam_axis = figure.add_subplot(2, len(panels), len(panels) + column + 1)
        fractures = (None if fractured_labels is None
                     else np.isin(crop.label_map[:, :, z], sorted(fractured_labels.get(crop.case, set()))))
        _show(cam_axis, crop.ct_hu[:, :, z], spacing,
              attention_title(cam[:, :, z], crop.label_map[:, :, z] == crop.label, example.grade > 0, fractures),
              cmap="gray", vmin=CT_DISPLAY_WINDOW_HU[0], vmax=CT_DISPLAY_WINDOW_HU[1])
        cam_axis.imshow(cam[:, :, z], aspect=spacing[0] / spacing[1], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    figure.tight_layout()
    return figure


def synthesis_figure(dataroot: Path, results: Path, examples: Sequence[Example]) -> Figure | None:
    """Per example (rows): original CT, pseudo-healthy CT, original labels, pseudo-healthy labels
    (mid-sagittal slice of the crop)."""
    panels = []
    layout = OutputLayout(results)
    for example in examples:
        fake_ct, fake_label = layout.ct(example.key), layout.label(example.key)
        if not (fake_ct.is_file() and fake_label.is_file()):
            continue
        try:
            crop = load_crop(dataroot, example.key)
            panels.append((example, crop, load_ct(fake_ct).array, load_mask(fake_label).array))
        except (ImageIOError, OSError, ValueError):
            continue
    if not panels:
        return None
    figure = Figure(figsize=(9.6, 2.9 * len(panels)))
    labels_cmap = _label_colormap()
    for row, (example, crop, fake_ct, fake_label) in enumerate(panels):
        z = crop.ct_hu.shape[2] // 2
        spacing = crop.spacing_mm
        images = [(crop.ct_hu[:, :, z], "original CT"), (fake_ct[:, :, z], "pseudo-healthy CT"),
                  (crop.label_map[:, :, z], "original labels"), (fake_label[:, :, z], "pseudo-healthy labels")]
        for column, (image, title) in enumerate(images):
            axis = figure.add_subplot(len(panels), 4, 4 * row + column + 1)
            heading = f"{example.title}\n{title}" if column == 0 else title
            if column < 2:
                _show(axis, image, spacing, heading, cmap="gray",
                      vmin=CT_DISPLAY_WINDOW_HU[0], vmax=CT_DISPLAY_WINDOW_HU[1])
            else:
                _show(axis, _label_display(image), spacing, heading, cmap=labels_cmap, vmin=0, vmax=9)
            if column in (1, 3):
                axis.contour(crop.label_map[:, :, z] == crop.label, levels=[0.5], colors="red", linewidths=0.7)
    figure.tight_layout()
    return figure


def scatter_figure(comparisons: dict[str, pd.DataFrame]) -> Figure | None:
    """Regional RHLV against the true regional loss ratio, one panel per method; filled markers are
    vertebrae next to a fracture."""
    if not comparisons:
        return None
    figure = Figure(figsize=(5.0 * len(comparisons), 4.6))
    measured = np.concatenate([table[list(RHLV_COLUMN_OF_REGION.values())].to_numpy(dtype=float).ravel()
                               for table in comparisons.values()])
    measured = measured[np.isfinite(measured)]
    low = min(-0.1, float(measured.min())) if measured.size else -0.1  # one y-range for every panel
    high = max(0.7, float(measured.max())) if measured.size else 0.7
    axes = np.atleast_1d(figure.subplots(1, len(comparisons), sharey=True))
    for index, (axis, (method, table)) in enumerate(zip(axes, comparisons.items())):
        for region, column in RHLV_COLUMN_OF_REGION.items():
            for adjacent, marker in ((False, "o"), (True, "^")):
                rows = table[table["adjacent_fracture"] == adjacent]
                colour = REGION_COLOURS[region]
                axis.scatter(rows[f"loss_{region}"], rows[column], s=18, marker=marker,
                             facecolors=colour if adjacent else "none", edgecolors=colour,
                             label=f"{region}{' (adjacent fracture)' if adjacent else ''}")
        axis.plot([low, high], [low, high], color="0.3", linewidth=0.8, linestyle="--")
        for threshold in GENANT_THRESHOLDS:
            axis.axvline(threshold, color="0.8", linewidth=0.6)
            axis.axhline(threshold, color="0.8", linewidth=0.6)
        axis.set_xlim(-0.05, 0.7)
        axis.set_ylim(low, high)
        summary = accuracy_summary(table)
        errors = " / ".join(fmt(summary[f"mae_{region}"]) for region in RHLV_COLUMN_OF_REGION)
        axis.set_title(f"{method}: MAE {errors} (n={summary['n']})", fontsize=9)
        axis.set_xlabel("true height-loss ratio (phantom truth)")
        if index == 0:
            axis.set_ylabel("measured RHLV (same scale in every panel)")
            axis.legend(fontsize=6, loc="upper left")
    figure.tight_layout()
    return figure


def loss_figure(loss_log: Path) -> Figure | None:
    """Generator loss terms of the training log against iterations."""
    if not loss_log.is_file():
        return None
    log = pd.read_csv(loss_log)
    terms = [term for term in LOSS_TERMS if term in log.columns]
    if log.empty or not terms:
        return None
    figure = Figure(figsize=(6.4, 3.0))
    axis = figure.add_subplot(1, 1, 1)
    for term in terms:
        axis.plot(log["total_iters"], log[term], label=term, linewidth=1.0)
    axis.set_yscale("log")
    axis.set_xlabel("iteration")
    axis.set_ylabel("weighted loss")
    axis.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    return figure
