"""Convert crops written by the published HealthiVert-GAN straightening into this project's crops.

Reads ``<src>/CT/<case>_<v>.nii.gz`` (float64 grey 0..255 of the -300..800 HU window),
``<src>/label/<case>_<v>.nii.gz`` (float64 ids) and, when there is one, the heatmap
``<cam_src>/<case>_<v>[_0|_1].nii.gz`` (float [0, 1]); writes

    <out>/CT/<key>.nii.gz      int16 HU
    <out>/label/<key>.nii.gz   uint8 VerSe ids
    <out>/label/<key>.json     sidecar (original geometry unknown)
    <cam_out>/<key>.nii.gz     float32 heatmap

Array axes are kept as they are. A bad crop is named with its problem and skipped; the
exit status is 1 when any crop failed.

Example:
    python straighten/import_reference_crops.py --src OLD/straighten --out DIR/straightened \\
        --cam_src OLD/Attention/heatmap
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.image_io import ImageIOError
from data.reference_crops import import_crop, published_keys
from util.cli import DefaultsHelpFormatter

DEFAULT_CAM_SUBFOLDERS = ("heatmap", "heatmap_CT")  # looked for inside --src
PUBLISHED_CAM_FOLDER = Path("Attention/heatmap")  # where the published grad_CAM_3d_sagittal.py writes them


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--src", required=True, type=Path, help="published straightened folder with CT/ and label/")
    parser.add_argument("--out", required=True, type=Path, help="output crop folder (our CT/ and label/)")
    parser.add_argument("--cam_src", type=Path, default=None,
                        help="published heatmap folder (default: the first of <src>/heatmap, <src>/heatmap_CT and "
                             "./Attention/heatmap that exists; crops without a heatmap are imported without one)")
    parser.add_argument("--cam_out", type=Path, default=None,
                        help="output heatmap folder (default: heatmap/ beside --out)")
    parser.add_argument("--spacing_mm", type=float, default=1.0,
                        help="voxel size of the published crops (its straightening samples 1 voxel steps)")
    return parser


def _cam_source(args: argparse.Namespace) -> Path | None:
    if args.cam_src is not None:
        return args.cam_src
    candidates = [args.src / name for name in DEFAULT_CAM_SUBFOLDERS] + [PUBLISHED_CAM_FOLDER]
    return next((folder for folder in candidates if folder.is_dir()), None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.spacing_mm <= 0:
        print(f"error: --spacing_mm {args.spacing_mm}: must be positive", file=sys.stderr)
        return 2
    if args.cam_src is not None and not args.cam_src.is_dir():
        print(f"error: {args.cam_src}: heatmap folder not found", file=sys.stderr)
        return 2
    try:
        keys = published_keys(args.src)
    except ImageIOError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not keys:
        print(f"error: {args.src / 'label'}: no <case>_<v>.nii.gz label crops", file=sys.stderr)
        return 2
    cam_src = _cam_source(args)
    cam_out = args.cam_out if args.cam_out is not None else args.out.parent / "heatmap"
    failed, with_cam = [], 0
    for key in keys:
        try:
            imported = import_crop(args.src, key, args.out, cam_src, cam_out, args.spacing_mm)
        except (ImageIOError, ValueError, OSError) as err:
            print(f"error: {key}: {err}", file=sys.stderr)
            failed.append(key)
            continue
        with_cam += imported.cam is not None
    done = len(keys) - len(failed)
    print(f"imported {done} of {len(keys)} crops into {args.out} ({with_cam} heatmaps into {cam_out})"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if cam_src is None:
        print("note: no heatmap folder found; give --cam_src DIR to import the published heatmaps", file=sys.stderr)
    else:
        print(f"heatmaps read from {cam_src}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
