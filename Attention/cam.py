"""Grad-CAM++ attention maps of the fracture classifier (HGAM; docs/design.md, 'Attention maps',
docs/design.md, 'Attention classifier').

For each straightened crop (axes S->I, A->P, R->L), the central ``n_slices``
sagittal slices ``ct[:, :, z]`` are prepared as in training (``Attention.slices.SliceInput``, read from
the checkpoint: window, view, vertebra margin) and passed in batches through the classifier;
Grad-CAM++ (``grad-cam`` package) for the fracture class is taken at the last convolutional block,
resized to the slice and min-max normalised per slice to [0, 1] (``--normalise volume``: divided by the
maximum over the slices instead). All other slices are zero, and so are the rows outside the
classifier's view when it was trained with ``--view_mm``; with ``--windows vertebrae`` (the default for
such a classifier) the view is centred on each vertebra of the crop in turn and each window's map is
weighted by that vertebra's fracture probability. The map
is written as ``<out>/<key>.nii.gz`` (float32, the crop's grid and affine) with
a PNG montage ``<out>/<key>.png`` of the map over the CT.

Every map (new or kept) is scored with ``Attention.localisation`` against its crop's target label:
per vertebra and aggregated (per morphology when the phantom truth ``<truth_dir>/<case>/<case>_truth.json``
is found) in ``<out>/localisation.json`` and ``<out>/localisation.csv``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from tqdm import tqdm

from Attention.checkpoint import checkpoint_path, load_classifier
from Attention.localisation import DEFAULT_SLACK_VOXELS, LOCALISATION_FILE, localise, summarise
from Attention.map_choices import CAM_NORMALISATIONS, CAM_WINDOWS
from Attention.networks import FRACTURE_CLASS, cam_target_layer
from Attention.slices import SliceInput, central_sagittal_slices, sagittal_slices
from data.crops import Crop, crop_paths, list_crop_keys, load_crop, require_listed_crops
from data.image_io import ImageIOError, load_ct, save_nifti, window_hu
from util import published_layout
from util.device import seed_everything
from util.distributed import resolve_device
from util.fileio import atomic_path, atomic_write, prepare_output_dir, read_json, write_json

LOGGER = logging.getLogger(__name__)

DEFAULT_N_SLICES = 30
MONTAGE_PANELS = 6


@dataclass
class CamResult:
    """Attention map of one crop: ``volume`` float32 (D0, D1, D2) in [0, 1], non-zero only in
    sagittal slices [start, stop); ``fracture_probability`` is the target's mean over those slices,
    ``vertebra_probability`` the same for every vertebra that got a window (label -> probability);
    ``target_volume`` the target's window alone (``volume`` itself with ``--windows target``)."""

    volume: np.ndarray
    slice_range: tuple[int, int]
    fracture_probability: float
    vertebra_probability: dict[int, float]
    target_volume: np.ndarray


def minmax_per_slice(maps: np.ndarray) -> np.ndarray:
    """Scale each map of (N, H, W) to [0, 1] (min -> 0, max -> 1); constant maps become 0."""
    maps = np.asarray(maps, dtype=np.float32)
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    scaled = np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)
    return np.clip(scaled, 0.0, 1.0)


class UnscaledGradCAMPlusPlus(GradCAMPlusPlus):
    """The package's Grad-CAM++ without its per-image min-max scaling: ReLU of the weighted activations,
    resized (bilinear) to the input, so that maps of several images keep their relative strength."""

    def compute_cam_per_layer(self, input_tensor: torch.Tensor, targets: list[nn.Module],
                              eigen_smooth: bool) -> list[np.ndarray]:
        activations = [a.cpu().data.numpy() for a in self.activations_and_grads.activations]
        grads = [g.cpu().data.numpy() for g in self.activations_and_grads.gradients]
        size = tuple(input_tensor.shape[-2:])
        per_layer = []
        for layer, layer_activations, layer_grads in zip(self.target_layers, activations, grads):
            cam = np.maximum(self.get_cam_image(input_tensor, layer, targets, layer_activations, layer_grads,
                                                eigen_smooth), 0)
            resized = nn.functional.interpolate(torch.from_numpy(np.float32(cam))[:, None], size=size,
                                                mode="bilinear", align_corners=False)
            per_layer.append(resized.numpy())
        return per_layer

    def aggregate_multi_layers(self, cam_per_target_layer: list[np.ndarray]) -> np.ndarray:
        return np.maximum(np.concatenate(cam_per_target_layer, axis=1), 0).mean(axis=1)


def fracture_cam(model: nn.Module, images: torch.Tensor, batch_size: int,
                 normalise: str = "slice") -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM++ of the fracture class for images (N, 1, H, W), in batches.

    Returns maps (N, H, W) float32 in [0, 1] and fracture probabilities (N,). ``normalise``: ``"slice"``
    min-max normalises each image (the published code); ``"volume"`` divides all by their common maximum,
    so a slice with little fracture evidence keeps a weak map instead of a full-scale one.
    """
    if normalise not in CAM_NORMALISATIONS:
        raise ValueError(f"unknown CAM normalisation {normalise!r}; choose one of {list(CAM_NORMALISATIONS)}")
    maps, probabilities = [], []
    method = GradCAMPlusPlus if normalise == "slice" else UnscaledGradCAMPlusPlus
    with method(model=model, target_layers=[cam_target_layer(model)]) as cam:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            targets = [ClassifierOutputTarget(FRACTURE_CLASS)] * len(batch)
            maps.append(cam(input_tensor=batch, targets=targets))
            probabilities.append(torch.softmax(cam.outputs.detach(), dim=1)[:, FRACTURE_CLASS].cpu().numpy())
    maps = np.concatenate(maps).astype(np.float32)
    if normalise == "slice":
        return minmax_per_slice(maps), np.concatenate(probabilities)
    peak = float(maps.max()) if maps.size else 0.0
    return (maps / peak if peak > 0 else np.zeros_like(maps)), np.concatenate(probabilities)


def resolve_windows(windows: str, slice_input: SliceInput) -> str:
    """``"target"`` or ``"vertebrae"`` for a ``--windows`` choice: ``auto`` is ``vertebrae`` for a classifier
    with a view (``view_mm`` > 0), else ``target``. A classifier of whole slices has no window to move."""
    if windows not in CAM_WINDOWS:
        raise ValueError(f"unknown --windows {windows!r}; choose one of {list(CAM_WINDOWS)}")
    if windows == "auto":
        return "vertebrae" if slice_input.view_mm > 0 else "target"
    if windows == "vertebrae" and slice_input.view_mm <= 0:
        raise ValueError("--windows vertebrae needs a classifier trained with --view_mm > 0 "
                         "(one of whole slices sees every vertebra at once)")
    return windows


def vertebra_windows(label_map: np.ndarray, target_label: int,
                     target_rows: tuple[int, int]) -> dict[int, tuple[int, int]]:
    """Rows of the classifier's view centred on each vertebra of a crop (S->I, A->P, R->L labels).

    The target gets ``target_rows`` (the view as in training: the crop is centred on it); every other
    vertebra wholly inside the crop (not touching its first or last row) gets the same rows moved by the
    difference between its mean row and the target's, when they fit in the crop.
    """
    labels = np.asarray(label_map)
    n_rows = labels.shape[0]
    rows_of = {int(v): np.nonzero(labels == v)[0] for v in np.unique(labels) if v > 0}
    windows = {int(target_label): target_rows}
    if int(target_label) not in rows_of:
        return windows
    target_centre = float(rows_of[int(target_label)].mean())
    for label, rows in rows_of.items():
        if label == int(target_label) or rows.min() == 0 or rows.max() == n_rows - 1:
            continue
        shift = int(round(float(rows.mean()) - target_centre))
        start, stop = target_rows[0] + shift, target_rows[1] + shift
        if 0 <= start and stop <= n_rows:
            windows[label] = (start, stop)
    return windows


def cam_volume(model: nn.Module, crop: Crop, slice_input: SliceInput, n_slices: int = DEFAULT_N_SLICES,
               batch_size: int = 16, normalise: str = "slice", windows: str = "target") -> CamResult:
    """Attention map of one crop (S->I, A->P, R->L) on the crop's grid, zero outside the central
    ``n_slices`` sagittal slices.

    ``windows`` ``"target"``: one map on the classifier's view of the target (all rows for a classifier of
    whole slices), scaled by ``normalise``. ``"vertebrae"``: the view is centred on each vertebra of the
    crop in turn (:func:`vertebra_windows`); each window's map, scaled by ``normalise``, is multiplied by
    that vertebra's fracture probability, and overlapping windows keep the larger value, so a healthy
    neighbour gets a weak map and a fractured one a strong map.
    """
    start, stop = central_sagittal_slices(crop.ct_hu.shape[2], n_slices)
    target_rows = slice_input.rows(crop.ct_hu.shape[0], float(crop.spacing_mm[0]))
    mode = resolve_windows(windows, slice_input)
    rows_by_label = (vertebra_windows(crop.label_map, crop.label, target_rows) if mode == "vertebrae"
                     else {int(crop.label): target_rows})
    keep = slice_input.keep_mask(crop.label_map, crop.spacing_mm)  # once for all windows
    volume = np.zeros(crop.ct_hu.shape, dtype=np.float32)
    target_volume = np.zeros_like(volume) if mode == "vertebrae" else volume
    probabilities: dict[int, float] = {}
    for label, rows in rows_by_label.items():
        images = torch.from_numpy(sagittal_slices(crop.ct_hu, range(start, stop), slice_input.window, rows, keep))
        maps, slice_probabilities = fracture_cam(model, images, batch_size, normalise)
        probabilities[label] = float(slice_probabilities.mean())
        if mode == "vertebrae":
            maps = maps * np.float32(probabilities[label])
        if label == int(crop.label) and target_volume is not volume:
            target_volume[rows[0]:rows[1], :, start:stop] = np.moveaxis(maps, 0, 2)
        placed = volume[rows[0]:rows[1], :, start:stop]
        np.maximum(placed, np.moveaxis(maps, 0, 2), out=placed)
    return CamResult(volume, (start, stop), probabilities[int(crop.label)], probabilities, target_volume)


def save_montage(path: str | Path, ct_hu: np.ndarray, cam: np.ndarray, slice_range: tuple[int, int],
                 spacing_mm: Sequence[float], window: tuple[float, float], title: str) -> Path:
    """PNG of up to ``MONTAGE_PANELS`` sagittal slices in ``slice_range``: the map (jet) over the CT (gray).

    Slices are shown with rows S->I and columns A->P at the crop's aspect ratio (``spacing_mm`` per axis).
    """
    start, stop = slice_range
    picks = np.unique(np.linspace(start, stop - 1, min(MONTAGE_PANELS, stop - start)).round().astype(int))
    aspect = float(spacing_mm[0]) / float(spacing_mm[1])
    height_in = 2.4 * ct_hu.shape[0] * aspect / ct_hu.shape[1]
    figure = Figure(figsize=(2.4 * len(picks), height_in + 0.6), dpi=80)
    FigureCanvasAgg(figure)
    for i, z in enumerate(picks):
        axis = figure.add_subplot(1, len(picks), i + 1)
        axis.imshow(window_hu(ct_hu[:, :, z], window), cmap="gray", vmin=-1, vmax=1, aspect=aspect)
        axis.imshow(cam[:, :, z], cmap="jet", vmin=0, vmax=1, alpha=0.4, aspect=aspect)
        axis.set_title(f"sagittal z={z}", fontsize=8)
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
    return path


def cam_parser() -> argparse.ArgumentParser:
    """Command-line options of ``Attention/grad_CAM_3d_sagittal.py``."""
    parser = argparse.ArgumentParser(
        description="Grad-CAM++ attention maps of the fracture classifier for every straightened crop: "
                    "<out>/<case>_<v>.nii.gz (float32 in [0, 1], crop grid) and a PNG montage.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dataroot", type=Path, default=published_layout.DATAROOT,
                        help="straightened crop folder (CT/, label/)")
    parser.add_argument("--name", default=published_layout.CLASSIFIER_NAME,
                        help="experiment name of the classifier trained by Attention/train_classifier.py")
    parser.add_argument("--checkpoints_dir", type=Path, default=Path("checkpoints"),
                        help="reads <checkpoints_dir>/<name>/classifier.pth")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default: ./{published_layout.CAM_DIR} for --dataroot "
                             f"./{published_layout.DATAROOT}, the published layout; else 'heatmap' beside "
                             "--dataroot, i.e. DIR/heatmap)")
    parser.add_argument("--n_slices", type=int, default=DEFAULT_N_SLICES,
                        help="central sagittal slices that get a map (zero elsewhere)")
    parser.add_argument("--batch_size", type=int, default=16, help="slices per Grad-CAM++ batch")
    parser.add_argument("--normalise", choices=CAM_NORMALISATIONS, default="slice",
                        help="slice: min-max per sagittal slice (the published code); volume: by the crop's maximum, "
                             "so slices without fracture evidence keep weak maps")
    parser.add_argument("--windows", choices=CAM_WINDOWS, default="auto",
                        help="target: one map on the classifier's view of the target (the published map for a "
                             "classifier of whole slices); vertebrae: the view centred on each vertebra of the crop "
                             "in turn, each map times that vertebra's fracture probability, so fractured neighbours "
                             "are marked too; auto: vertebrae for a classifier trained with --view_mm, else target")
    parser.add_argument("--keys", nargs="+", default=None, metavar="KEY",
                        help="only these crops (<case>_<v>); default: every crop under --dataroot")
    parser.add_argument("--overwrite", action="store_true", help="recompute maps that already exist")
    parser.add_argument("--no_png", action="store_true", help="skip the PNG montages")
    parser.add_argument("--gpu_ids", default="auto",
                        help="auto: the first GPU when CUDA is available, else the CPU; 0: that GPU; -1: CPU")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--truth_dir", type=Path, default=None,
                        help="phantom truth folder (<case>/<case>_truth.json) for the localisation summary per "
                             "grade and morphology (default: 'raw' beside --dataroot when it exists)")
    parser.add_argument("--slack", type=int, default=DEFAULT_SLACK_VOXELS,
                        help="voxels the target body is dilated by when scoring where the maps point")
    return parser


def parse_cam_options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check ``grad_CAM_3d_sagittal`` options (fills the default ``--out``)."""
    parser = cam_parser()
    opt = parser.parse_args(argv)
    if opt.n_slices < 1 or opt.batch_size < 1:
        parser.error("--n_slices and --batch_size must be >= 1")
    if opt.out is None:
        opt.out = default_cam_dir(opt.dataroot)
    return opt


def default_cam_dir(dataroot: str | Path) -> Path:
    """``DIR/heatmap`` for ``--dataroot DIR/straightened``; ``./Attention/heatmap`` for the published
    ``./dataset/straightened``."""
    if published_layout.is_published_dataroot(dataroot):
        return published_layout.CAM_DIR
    return Path(dataroot).parent / "heatmap"


def case_truth(truth_dir: Path | None, case: str) -> dict[int, dict[str, Any]]:
    """``{label: {"grade", "morphology"}}`` of every vertebra in the phantom truth file
    ``<truth_dir>/<case>/<case>_truth.json`` ({} when there is none)."""
    path = None if truth_dir is None else Path(truth_dir) / case / f"{case}_truth.json"
    if path is None or not path.is_file():
        return {}
    return {int(v["label"]): {"grade": int(v["grade"]), "morphology": v["morphology"]}
            for v in read_json(path).get("vertebrae", [])}


def vertebra_truth(truth: dict[int, dict[str, Any]], label: int) -> dict[str, Any]:
    """``{"fractured", "grade", "morphology"}`` of vertebra ``label`` in its case's ``case_truth``, or Nones
    when the truth does not list it (or there is none)."""
    vertebra = truth.get(int(label))
    if vertebra is None:
        return {"fractured": None, "grade": None, "morphology": None}
    return {"fractured": vertebra["grade"] > 0, **vertebra}


def truth_folder(opt: argparse.Namespace) -> Path:
    """``--truth_dir``, or ``raw`` beside ``--dataroot``."""
    return Path(opt.truth_dir) if opt.truth_dir is not None else Path(opt.dataroot).parent / "raw"


def crop_localisation(cam: np.ndarray, crop: Crop, truth: dict[int, dict[str, Any]],
                      slack_voxels: int) -> dict[str, Any]:
    """``Attention.localisation.localise`` of map ``cam`` on the crop's target label and, with a phantom
    truth for its case (``case_truth``; {} when none), on every fractured body of the crop; with the
    vertebra's truth."""
    fractured = (np.isin(crop.label_map, [label for label, v in truth.items() if v["grade"] > 0]) if truth
                 else None)
    measure = localise(cam, crop.label_map == crop.label, slack_voxels, fractured)
    return {**measure.as_dict(), **vertebra_truth(truth, crop.label)}


def localisation_records(opt: argparse.Namespace, keys: Sequence[str], out: Path) -> dict[str, dict[str, Any]]:
    """:func:`crop_localisation` of each map ``<out>/<key>.nii.gz`` that exists (each case's truth read once)."""
    records = {}
    truths: dict[str, dict[int, dict[str, Any]]] = {}
    for key in keys:
        map_path = out / f"{key}.nii.gz"
        if not map_path.is_file():
            continue
        try:
            crop = load_crop(opt.dataroot, key, need_ct=False)
            if crop.case not in truths:
                truths[crop.case] = case_truth(truth_folder(opt), crop.case)
            records[key] = crop_localisation(load_ct(map_path).array, crop, truths[crop.case], opt.slack)
        except (ImageIOError, OSError, ValueError) as err:
            LOGGER.error("%s: localisation not computed: %s", key, err)
    return records


def write_localisation(out: Path, records: dict[str, dict[str, Any]],
                       target_window: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write ``localisation.json`` (per vertebra and ``summarise``; with ``target_window`` records, the same
    for the maps of the targets' own windows under ``"target_window"``) and ``localisation.csv`` into ``out``."""
    summary = summarise(records)
    document: dict[str, Any] = {"vertebrae": records, "summary": summary}
    if target_window:
        document["target_window"] = {"vertebrae": target_window, "summary": summarise(target_window)}
    write_json(out / LOCALISATION_FILE, document)
    columns = ["mass_share", "peak_in_target", "mean_value", "body_fraction", "fracture_mass_share",
               "peak_on_fracture", "fractured", "grade", "morphology"]
    with atomic_write(out / "localisation.csv", encoding="utf-8") as handle:
        handle.write(",".join(["key", *columns]) + "\n")
        for key, record in records.items():
            handle.write(",".join([key, *("" if record[c] is None else str(record[c]) for c in columns)]) + "\n")
    return summary


def _map_one(model: nn.Module, opt: argparse.Namespace, key: str, out: Path,
             slice_input: SliceInput) -> tuple[float, dict[str, Any] | None]:
    """Compute and write the map (and PNG) of one crop into ``out``; returns its fracture probability and,
    with ``--windows vertebrae``, the localisation of the target's own window (else None)."""
    paths = crop_paths(opt.dataroot, key)
    missing = [str(p) for p in (paths.ct, paths.label) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{key}: crop file not found: {', '.join(missing)}")
    crop = load_crop(opt.dataroot, key)
    result = cam_volume(model, crop, slice_input, opt.n_slices, opt.batch_size, opt.normalise, opt.windows)
    if not opt.no_png:
        save_montage(out / f"{key}.png", crop.ct_hu, result.volume, result.slice_range, crop.spacing_mm,
                     slice_input.window,
                     f"{key}  p(fracture) = {result.fracture_probability:.2f}")
    save_nifti(result.volume, crop.affine, out / f"{key}.nii.gz", dtype=np.float32)
    if result.target_volume is result.volume:
        return result.fracture_probability, None
    return result.fracture_probability, crop_localisation(result.target_volume, crop,
                                                          case_truth(truth_folder(opt), crop.case), opt.slack)


def generate_maps(opt: argparse.Namespace) -> dict[str, Any]:
    """Write the attention map of every requested crop (resumable: existing maps are kept
    unless ``opt.overwrite``). A bad crop is reported and the run goes on.

    Returns ``{"out", "written", "skipped", "failed" {key: reason}, "fracture_probability" {key: p},
    "seconds_per_vertebra"}``. Raises when the checkpoint is missing or unreadable.
    """
    seed_everything(opt.seed)
    device = resolve_device(opt.gpu_ids)
    model, checkpoint = load_classifier(checkpoint_path(opt.checkpoints_dir, opt.name), device)
    slice_input = SliceInput.from_checkpoint(checkpoint)
    resolve_windows(opt.windows, slice_input)
    out = prepare_output_dir(Path(opt.out) if opt.out is not None else default_cam_dir(opt.dataroot),
                             "attention map folder (--out)")
    keys = list(opt.keys) if opt.keys else list_crop_keys(opt.dataroot)
    require_listed_crops(opt.dataroot, keys, "--keys" if opt.keys else Path(opt.dataroot) / "label")
    written: list[str] = []
    skipped: list[str] = []
    failed: dict[str, str] = {}
    probabilities: dict[str, float] = {}
    target_window: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for key in tqdm(keys, desc="Grad-CAM++", unit="vertebra"):
        if (out / f"{key}.nii.gz").exists() and not opt.overwrite:
            skipped.append(key)
            continue
        try:
            probabilities[key], own_window = _map_one(model, opt, key, out, slice_input)
            if own_window is not None:
                target_window[key] = own_window
            written.append(key)
        except (OSError, ValueError) as err:
            failed[key] = str(err)
            LOGGER.error("%s: %s", key, err)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            failed[key] = (f"out of GPU memory on {device} with --batch_size {opt.batch_size}: "
                           "pass a smaller --batch_size, or --gpu_ids -1 for the CPU")
            LOGGER.error("%s: %s", key, failed[key])
    elapsed = time.perf_counter() - started
    localisation = write_localisation(out, localisation_records(opt, keys, out), target_window)
    return {
        "out": str(out),
        "written": written,
        "skipped": skipped,
        "failed": failed,
        "fracture_probability": probabilities,
        "seconds_per_vertebra": elapsed / len(written) if written else None,
        "localisation": localisation,
        "localisation_target_window": summarise(target_window) if target_window else None,
    }


__all__ = [
    "CamResult", "cam_parser", "cam_volume", "case_truth", "crop_localisation", "default_cam_dir", "fracture_cam",
    "generate_maps", "localisation_records", "minmax_per_slice", "parse_cam_options", "resolve_windows",
    "save_montage", "truth_folder", "vertebra_truth", "vertebra_windows", "write_localisation",
]
