"""Import a generator trained with the published HealthiVert-GAN code into this project's checkpoint format.

    python models/import_reference_weights.py --weights latest_net_G.pth --name NAME [--checkpoints_dir DIR]
    python eval_3d_sagittal_twostage.py --name NAME ...        # then synthesizes with the published weights

The published code saves ``Generator.state_dict()`` (``<epoch>_net_G.pth``): for every convolution
``<stage>.<layer>.conv.{bias, weight_orig, weight_u, weight_v}`` (old-style
``torch.nn.utils.spectral_norm``) and ``<stage>.fc_height.{weight, bias}``, with ``<stage>`` in
``coarse_generator`` and ``fine_generator``. The layers are the same as ours one for one
(``REFERENCE_LAYERS``); the spectral-norm vectors u and v are copied, so the imported network computes
the same normalised weights. The file may also be a dict holding the state_dict (under ``state_dict``,
``netG``, ``G``, ``generator`` or ``model``) or carry DataParallel's ``module.`` prefix.

The result is ``<checkpoints_dir>/<name>/latest.pth`` (``util.checkpoint`` format, generator only,
epoch 0), whose options record ``ngf``, the 40 mm band, the plane (sagittal) and the source file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from data.image_io import DEFAULT_WINDOW_HU
from models.networks import HealthiVertGenerator
from util.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, Progress, checkpoint_path, rng_state
from util.fileio import atomic_torch_save, read_torch_file

REFERENCE_STAGES = {"coarse_generator": "coarse", "fine_generator": "fine"}
# reference layer name -> our module path (inside the stage); convolutions are GenConv, their conv is ".0"
REFERENCE_LAYERS: dict[str, dict[str, str]] = {
    "coarse_generator": {
        "conv1": "encoder.0", "conv2_downsample": "encoder.1", "conv3": "encoder.2", "conv4_downsample": "encoder.3",
        "conv5": "encoder.4", "conv6": "encoder.5", "conv7_atrous": "encoder.6.0", "conv8_atrous": "encoder.6.1",
        "conv9_atrous": "encoder.6.2", "conv10_atrous": "encoder.6.3", "conv11": "bottleneck.0",
        "conv12": "bottleneck.1", "conv20": "half_res.0", "conv13": "half_res.1", "conv14": "half_res.2",
        "conv19": "full_res.0", "conv15": "full_res.1", "conv16": "full_res.2", "conv17": "ct_head",
        "conv18": "seg_head",
    },
    "fine_generator": {
        "conv1": "conv_branch.0", "conv2_downsample": "conv_branch.1", "conv3": "conv_branch.2",
        "conv4_downsample": "conv_branch.3", "conv5": "conv_branch.4", "conv6": "conv_branch.5",
        "conv7_atrous": "conv_branch.6.0", "conv8_atrous": "conv_branch.6.1", "conv9_atrous": "conv_branch.6.2",
        "conv10_atrous": "conv_branch.6.3", "pmconv1": "attention_encoder.0",
        "pmconv2_downsample": "attention_encoder.1",
        "pmconv3": "attention_encoder.2", "pmconv4_downsample": "attention_encoder.3", "pmconv5": "attention_encoder.4",
        "pmconv6": "attention_encoder.5", "pmconv9": "attention_decoder.0", "pmconv10": "attention_decoder.1",
        "allconv11": "merge", "allconv12": "quarter_res.0", "allconv19": "quarter_res.1", "allconv13": "half_res.0",
        "allconv14": "half_res.1", "allconv15": "full_res.0", "allconv16": "full_res.1", "allconv17": "ct_head",
        "allconv18": "seg_head",
    },
}
CONV_TENSORS = {"bias": "0.bias", "weight_orig": "0.parametrizations.weight.original",
                "weight_u": "0.parametrizations.weight.0._u", "weight_v": "0.parametrizations.weight.0._v"}
WRAPPER_KEYS = ("state_dict", "netG", "G", "generator", "model")


def reference_key_map() -> dict[str, str]:
    """Every reference state_dict key -> the key of ``HealthiVertGenerator.state_dict()``."""
    mapping: dict[str, str] = {}
    for stage, layers in REFERENCE_LAYERS.items():
        ours = REFERENCE_STAGES[stage]
        for layer, path in layers.items():
            for tensor, suffix in CONV_TENSORS.items():
                mapping[f"{stage}.{layer}.conv.{tensor}"] = f"{ours}.{path}.{suffix}"
        for tensor in ("weight", "bias"):
            mapping[f"{stage}.fc_height.{tensor}"] = f"{ours}.height_head.fc.{tensor}"
    return mapping


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def find_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The generator state_dict inside a loaded file: the file itself or one of ``WRAPPER_KEYS``;
    DataParallel's ``module.`` prefix removed. ``ValueError`` naming ``path`` otherwise."""
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: already a {CHECKPOINT_FORMAT} file (copy it to <checkpoints_dir>/<name>/latest.pth)")
    if not _is_tensor_dict(obj) and isinstance(obj, Mapping):
        held = [obj[key] for key in WRAPPER_KEYS if _is_tensor_dict(obj.get(key))]
        obj = held[0] if held else obj
    if not _is_tensor_dict(obj):
        raise ValueError(f"{path}: not a generator state_dict (expected a dict of tensors, or a dict holding one "
                         f"under {', '.join(WRAPPER_KEYS)})")
    return {key.removeprefix("module."): value for key, value in obj.items()}


def infer_ngf(state: Mapping[str, torch.Tensor], path: Path) -> int:
    """Base width from the first coarse convolution (its output channels)."""
    weight = state.get("coarse_generator.conv1.conv.weight_orig")
    if weight is None or weight.dim() != 4:
        raise ValueError(f"{path}: no coarse_generator.conv1.conv.weight_orig; not a published HealthiVert-GAN "
                         "generator state_dict")
    return int(weight.shape[0])


def convert_state_dict(reference: Mapping[str, torch.Tensor], generator: HealthiVertGenerator,
                       path: Path) -> dict[str, torch.Tensor]:
    """Reference tensors renamed to ``generator``'s keys; ``ValueError`` naming ``path`` for missing or
    unexpected keys and for shapes that do not fit (``--ngf``)."""
    mapping = reference_key_map()
    missing = [key for key in mapping if key not in reference]
    unexpected = [key for key in reference if key not in mapping]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(mapping)} generator keys missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise ValueError(f"{path}: {'; '.join(parts)}: not a complete published HealthiVert-GAN generator")
    target = generator.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, ours in mapping.items():
        tensor = reference[key]
        if tuple(tensor.shape) != tuple(target[ours].shape):
            raise ValueError(f"{path}: {key} has shape {tuple(tensor.shape)}, expected {tuple(target[ours].shape)} "
                             f"for --ngf {generator.ngf}")
        converted[ours] = tensor.detach().to(torch.float32).clone()
    return converted


def import_reference_weights(weights: str | Path, name: str, checkpoints_dir: str | Path = "./checkpoints",
                             ngf: int | None = None, plane: str = "sagittal") -> Path:
    """Convert a published generator file into ``<checkpoints_dir>/<name>/latest.pth``; returns its path.

    ``ngf`` defaults to the width found in the file. Nothing is written when the file is wrong or partial.
    """
    path = Path(weights)
    state = find_state_dict(read_torch_file(path, what="generator weights"), path)
    width = infer_ngf(state, path) if ngf is None else int(ngf)
    generator = HealthiVertGenerator(width)
    converted = convert_state_dict(state, generator, path)
    generator.load_state_dict(converted)
    options = {"model": "healthivert", "ngf": width, "mask_height": 40.0, "plane": plane,
               "hu_window": list(DEFAULT_WINDOW_HU), "name": name, "imported_from": str(path)}
    checkpoint = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                  "model": {"nets": {"G": generator.state_dict()}, "optimizers": {}, "schedulers": []},
                  "progress": vars(Progress(epoch=0, epoch_iter=0, total_iters=0, epoch_done=True)),
                  "rng": rng_state(), "options": options}
    out = checkpoint_path(Path(checkpoints_dir) / name, "latest")
    atomic_torch_save(checkpoint, out)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--weights", required=True, help="published generator file (<epoch>_net_G.pth)")
    parser.add_argument("--name", required=True, help="experiment name: writes <checkpoints_dir>/<name>/latest.pth")
    parser.add_argument("--checkpoints_dir", default="./checkpoints", help="where experiments are stored")
    parser.add_argument("--ngf", type=int, default=None, help="generator base width (default: read from the file)")
    parser.add_argument("--plane", default="sagittal", choices=["sagittal", "coronal"],
                        help="plane the published model was trained on (eval_3d_sagittal: sagittal)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = import_reference_weights(args.weights, args.name, args.checkpoints_dir, args.ngf, args.plane)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
