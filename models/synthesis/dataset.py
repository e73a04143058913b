"""Synthesis of a whole crop folder (docs/design.md, 'Iterative synthesis' and 'Devices and distributed runs').

Resumes (vertebrae whose outputs came from the same checkpoints, options and inputs are skipped),
shards the vertebrae over ``torchrun`` ranks, writes the planes and the 2.5D fusion, and collects
per-vertebra failures in the summary while the run continues.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.attention_maps import attention_map_path, load_attention_map
from data.crops import Crop, crop_paths, file_signature, load_crop, require_listed_crops
from data.image_io import ImageIOError, Volume
from models.compilation import compile_network
from models.synthesis.checkpoints import checkpoint_file, file_sha256, load_generator
from models.synthesis.fusion import fuse_planes
from models.synthesis.outputs import (
    SynthesisSummary,
    gather_summaries,
    output_layouts,
    select_keys,
    shard,
)
from models.synthesis.plane import PlaneSynthesis, synthesize_plane
from models.synthesis.run_settings import SynthesisRunSettings
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

    def __init__(self, run: SynthesisRunSettings, device: torch.device) -> None:
        self.run = run
        self.device = device
        self.layouts = output_layouts(run.output_root, run.plane_mode)
        self.models = {plane: load_generator(checkpoint_file(run.checkpoints_dir, name, run.epoch, run.load_iter),
                                             device, plane) for plane, name in run.names.items()}
        if run.compile:  # results agree with eager to float rounding (benchmarks/README.md): not in the provenance
            for model in self.models.values():
                compile_network(model.generator, device)
        batch_size = resolve_batch_size(run.batch_size, device)
        amp_dtype = autocast_dtype(device, run.amp, run.cpu_bf16, run.amp_dtype)
        self.runners = {plane: GeneratorRunner(model.generator, device, batch_size, amp_dtype)
                        for plane, model in self.models.items()}
        self.run_provenance = {
            "checkpoints": {plane: {"path": str(model.path.resolve()), "sha256": file_sha256(model.path)}
                            for plane, model in self.models.items()},
            "options": {"plane": run.plane_mode, "amp_dtype": str(amp_dtype), "protocol": run.flags.protocol,
                        "cam_dir": str(run.cam_dir.resolve()) if run.cam_dir else None},
        }

        if not run.flags.iterative:  # only when set, so records of earlier runs still match
            self.run_provenance["options"]["no_iterative"] = True

    def provenance(self, key: str) -> dict[str, Any]:
        """What the outputs of ``key`` depend on: checkpoint contents, options, and the input files' size/mtime."""
        paths = crop_paths(self.run.dataroot, key)
        cam_dir = self.run.cam_dir
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
        label_path = crop_paths(self.run.dataroot, key).label
        crop = load_crop(self.run.dataroot, key)
        cam = load_attention(self.run.cam_dir, crop, label_path)
        row_spacing_mm = float(crop.spacing_mm[0])
        results: dict[str, PlaneSynthesis] = {}
        for plane, model in self.models.items():
            settings = settings_for(model.options, row_spacing_mm, self.run.flags,
                                    plane_pixel_area_mm2(crop.spacing_mm, plane))
            if settings.mask_height_px > crop.label_map.shape[0]:
                raise ValueError(f"{label_path}: band of {settings.mask_height_px} rows "
                                 f"exceeds the crop height {crop.label_map.shape[0]}")
            try:
                results[plane] = synthesize_plane(self.runners[plane], crop.ct_hu, crop.label_map, cam, crop.label,
                                                  plane, settings)
            except ValueError as err:
                raise ValueError(f"{label_path}: {err}") from None
        for plane, result in results.items():
            self.layouts[plane].write(key, result.ct_hu, result.label_map, crop.affine, provenance)
        if "fused" in self.layouts:
            ct, labels = fuse_planes(results["sagittal"], results["coronal"], crop.label)
            self.layouts["fused"].write(key, ct, labels, crop.affine, provenance)
        return cam is not None or self.run.cam_dir is None


def synthesize_dataset(opt: argparse.Namespace, show_progress: bool = True) -> SynthesisSummary:
    """Iterative synthesis of every vertebra of ``opt.dataroot`` (or of ``opt.split``) with the
    ``opt.name`` checkpoint(s); writes ``<synthesis_dir>/{CT_fake,label_fake}/<key>.nii.gz``
    (``models.synthesis.outputs.synthesis_dir``: ``opt.output_dir``, else ``<results_dir>/<name>``).

    The flags are read once (``SynthesisRunSettings.from_options``, which lists them). Under ``torchrun``
    (process group initialized by the caller, or RANK/WORLD_SIZE set) each rank takes every world_size-th
    vertebra; the returned summary covers all ranks when a process group is initialized. Checkpoint errors
    raise; per-vertebra errors are collected in the summary and the run continues.
    """
    started = time.perf_counter()
    run = SynthesisRunSettings.from_options(opt)
    rank, world_size = rank_and_size()
    device = resolve_device(run.gpu_ids)
    synthesizer = DatasetSynthesizer(run, device)
    if rank == 0:
        for layout in synthesizer.layouts.values():
            layout.prepare()
        prepare_output_dir(run.output_root, "synthesis output folder (--results_dir/--name or --output_dir)")
    keys = select_keys(run.dataroot, run.split, run.split_json)
    if run.num_test is not None:
        keys = keys[:run.num_test]
    require_listed_crops(run.dataroot, keys, run.split_path if run.selects_splits else run.dataroot / "label")
    summary = SynthesisSummary()
    if run.cam_dir is None and rank == 0:
        warnings.warn("no --cam_dir given: attention maps are all zeros (no fracture attention)", stacklevel=2)
    from tqdm import tqdm

    progress = tqdm(shard(keys, rank, world_size), desc=f"synthesis ({run.plane_mode})", unit="vertebra",
                    disable=not show_progress or rank != 0, dynamic_ncols=True)
    for key in progress:
        if not run.overwrite:
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
            warnings.warn(f"{run.cam_dir}: no attention map for {len(summary.missing_attention)} "
                          f"vertebra(e) (e.g. {summary.missing_attention[0]}.nii.gz); used zeros", stacklevel=2)
        write_json(run.output_root / "synthesis_summary.json", summary.as_dict())
    return summary
