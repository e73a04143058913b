"""Synthesis of a whole crop folder (docs/design.md, "Iterative synthesis" and "Devices and distributed runs").

Resumes (vertebrae whose outputs came from the same checkpoints, options and inputs are skipped),
shards the vertebrae over ``torchrun`` ranks, writes the planes and the 2.5D fusion, and collects
per-vertebra failures in the summary while the run continues.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.attention_maps import attention_map_path, load_attention_map
from data.crops import Crop, crop_paths, default_split_json, file_signature, load_crop, require_listed_crops
from data.image_io import ImageIOError, Volume
from data.masking import PLANES
from models.synthesis.checkpoints import checkpoint_file, file_sha256, load_generator
from models.synthesis.fusion import fuse_planes
from models.synthesis.outputs import (
    SynthesisSummary,
    gather_summaries,
    output_layouts,
    select_keys,
    shard,
    synthesis_dir,
)
from models.synthesis.plane import PlaneSynthesis, synthesize_plane
from models.synthesis.runner import GeneratorRunner, autocast_dtype, resolve_batch_size
from models.synthesis.settings import plane_pixel_area_mm2, settings_for
from util.distributed import rank_and_size, resolve_device
from util.fileio import prepare_output_dir, write_json


def load_attention(cam_dir: str | Path | None, crop: Crop, label_path: Path) -> np.ndarray | None:
    """The crop's attention map in [0, 1] (``data.attention_maps``), ``None`` without ``cam_dir`` or when
    the crop has no map there."""
    if not cam_dir:
        return None
    path = attention_map_path(cam_dir, crop.key)
    if not path.is_file():
        return None
    return load_attention_map(path, Volume(crop.label_map, crop.affine, label_path))


class DatasetSynthesizer:
    """Synthesizes vertebrae of a crop folder with one (sagittal or coronal) or two (both) generators."""

    def __init__(self, opt: argparse.Namespace, device: torch.device) -> None:
        self.opt = opt
        self.device = device
        self.plane_mode = getattr(opt, "plane", "sagittal")
        self.layouts = output_layouts(synthesis_dir(opt), self.plane_mode)
        names = {"sagittal": opt.name, "coronal": opt.name}
        if self.plane_mode == "both":
            if not getattr(opt, "name_coronal", None):
                raise ValueError("--plane both needs --name_coronal (the coronal model's checkpoint name)")
            names["coronal"] = opt.name_coronal
        planes = list(PLANES) if self.plane_mode == "both" else [self.plane_mode]
        checkpoints_dir = getattr(opt, "checkpoints_dir", "./checkpoints")
        epoch, load_iter = getattr(opt, "epoch", "latest"), int(getattr(opt, "load_iter", 0) or 0)
        self.models = {plane: load_generator(checkpoint_file(checkpoints_dir, names[plane], epoch, load_iter),
                                             device, plane) for plane in planes}
        batch_size = resolve_batch_size(int(getattr(opt, "synthesis_batch_size", -1)), device)
        amp_dtype = autocast_dtype(device, bool(getattr(opt, "amp", False)), bool(getattr(opt, "cpu_bf16", False)),
                                   getattr(opt, "amp_dtype", "auto"))
        self.runners = {plane: GeneratorRunner(model.generator, device, batch_size, amp_dtype)
                        for plane, model in self.models.items()}
        self.run_provenance = {
            "checkpoints": {plane: {"path": str(model.path.resolve()), "sha256": file_sha256(model.path)}
                            for plane, model in self.models.items()},
            "options": {"plane": self.plane_mode, "amp_dtype": str(amp_dtype),
                        "protocol": getattr(opt, "protocol", None),
                        "cam_dir": str(Path(opt.cam_dir).resolve()) if getattr(opt, "cam_dir", None) else None},
        }

        if getattr(opt, "no_iterative", False):  # only when set, so records of earlier runs still match
            self.run_provenance["options"]["no_iterative"] = True

    def provenance(self, key: str) -> dict[str, Any]:
        """What the outputs of ``key`` depend on: checkpoint contents, options, and the input files' size/mtime."""
        paths = crop_paths(self.opt.dataroot, key)
        cam_dir = getattr(self.opt, "cam_dir", None)
        inputs = {"ct": file_signature(paths.ct), "label": file_signature(paths.label),
                  "cam": file_signature(attention_map_path(cam_dir, key)) if cam_dir else None}
        return {**self.run_provenance, "inputs": inputs}

    def exists(self, key: str) -> bool:
        return all(layout.exists(key) for layout in self.layouts.values())

    def done(self, key: str) -> bool:
        """Every output of ``key`` exists and was made from the current checkpoints, options and inputs."""
        provenance = self.provenance(key)
        return all(layout.done(key, provenance) for layout in self.layouts.values())

    def synthesize(self, key: str) -> bool:
        """Synthesize and write one vertebra; returns whether its attention map was found."""
        provenance = self.provenance(key)
        crop = load_crop(self.opt.dataroot, key)
        cam = load_attention(getattr(self.opt, "cam_dir", None), crop, crop_paths(self.opt.dataroot, key).label)
        row_spacing_mm = float(crop.spacing_mm[0])
        results: dict[str, PlaneSynthesis] = {}
        for plane, model in self.models.items():
            settings = settings_for(model.options, row_spacing_mm, self.opt,
                                    plane_pixel_area_mm2(crop.spacing_mm, plane))
            if settings.mask_height_px > crop.label_map.shape[0]:
                raise ValueError(f"{crop_paths(self.opt.dataroot, key).label}: band of {settings.mask_height_px} rows "
                                 f"exceeds the crop height {crop.label_map.shape[0]}")
            try:
                results[plane] = synthesize_plane(self.runners[plane], crop.ct_hu, crop.label_map, cam, crop.label,
                                                  plane, settings)
            except ValueError as err:
                raise ValueError(f"{crop_paths(self.opt.dataroot, key).label}: {err}") from None
        for plane, result in results.items():
            self.layouts[plane].write(key, result.ct_hu, result.label_map, crop.affine, provenance)
        if "fused" in self.layouts:
            ct, labels = fuse_planes(results["sagittal"], results["coronal"], crop.label)
            self.layouts["fused"].write(key, ct, labels, crop.affine, provenance)
        return cam is not None or not getattr(self.opt, "cam_dir", None)


def synthesize_dataset(opt: argparse.Namespace, show_progress: bool = True) -> SynthesisSummary:
    """Iterative synthesis of every vertebra of ``opt.dataroot`` (or of ``opt.split``) with the
    ``opt.name`` checkpoint(s); writes ``<synthesis_dir>/{CT_fake,label_fake}/<key>.nii.gz``
    (:func:`synthesis_dir`: ``opt.output_dir``, else ``<results_dir>/<name>``).

    Uses ``opt``: dataroot, cam_dir, name, results_dir, output_dir, plane (sagittal | coronal | both),
    name_coronal, checkpoints_dir, epoch, load_iter, gpu_ids, split, split_json, num_test, overwrite,
    synthesis_batch_size, amp and amp_dtype, cpu_bf16 (bfloat16 on CPU). Under ``torchrun`` (process group
    initialized by the caller, or RANK/WORLD_SIZE set) each rank takes every world_size-th vertebra; the
    returned summary covers all ranks when a process group is initialized. Checkpoint errors raise;
    per-vertebra errors are collected in the summary and the run continues.
    """
    started = time.perf_counter()
    rank, world_size = rank_and_size()
    device = resolve_device(getattr(opt, "gpu_ids", "-1"))
    synthesizer = DatasetSynthesizer(opt, device)
    if rank == 0:
        for layout in synthesizer.layouts.values():
            layout.prepare()
        prepare_output_dir(synthesis_dir(opt), "synthesis output folder (--results_dir/--name or --output_dir)")
    keys = select_keys(opt.dataroot, getattr(opt, "split", None), getattr(opt, "split_json", None))
    num_test = getattr(opt, "num_test", math.inf)
    if num_test != math.inf:
        keys = keys[: int(num_test)]
    split_names = getattr(opt, "split", None)
    listed_in = (getattr(opt, "split_json", None) or default_split_json(opt.dataroot)
                 if split_names and split_names != "all" else Path(opt.dataroot) / "label")
    require_listed_crops(opt.dataroot, keys, listed_in)
    summary = SynthesisSummary()
    if not getattr(opt, "cam_dir", None) and rank == 0:
        warnings.warn("no --cam_dir given: attention maps are all zeros (no fracture attention)", stacklevel=2)
    from tqdm import tqdm

    progress = tqdm(shard(keys, rank, world_size), desc=f"synthesis ({synthesizer.plane_mode})", unit="vertebra",
                    disable=not show_progress or rank != 0, dynamic_ncols=True)
    for key in progress:
        if not getattr(opt, "overwrite", False):
            if synthesizer.done(key):
                summary.skipped.append(key)
                continue
            if synthesizer.exists(key):
                summary.redone.append(key)
        progress.set_postfix_str(key)
        try:
            if not synthesizer.synthesize(key):
                summary.missing_attention.append(key)
            summary.succeeded.append(key)
        except (ImageIOError, ValueError, FileNotFoundError, OSError, RuntimeError) as err:
            summary.failed[key] = " ".join(str(err).split())
    summary.seconds = time.perf_counter() - started
    summary = gather_summaries(summary)
    if rank == 0:
        if summary.missing_attention:
            warnings.warn(f"{getattr(opt, 'cam_dir', None)}: no attention map for {len(summary.missing_attention)} "
                          f"vertebra(e) (e.g. {summary.missing_attention[0]}.nii.gz); used zeros", stacklevel=2)
        write_json(synthesis_dir(opt) / "synthesis_summary.json", summary.as_dict())
    return summary
