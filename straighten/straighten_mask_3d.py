"""Straighten every case's spine and write one CT crop and one body-label crop per vertebra.

For each case folder ``<root>/raw/<case>/`` (CT + vertebra mask, any orientation and spacing):
fit a centre line through the vertebral-body centroids, resample the CT (linear) and the
de-pedicled labels (nearest) along it, and write, for every complete vertebra,

    <out>/CT/<case>_<label>.nii.gz      int16 HU
    <out>/label/<case>_<label>.nii.gz   uint8 VerSe ids, vertebral bodies only
    <out>/label/<case>_<label>.json     sidecar: sources, centre line, sampling

Axes: 0 superior->inferior, 1 anterior->posterior, 2 right->left; the target's body centroid is
at the crop centre. A mask without a CT gives label crops only. Vertebrae cut by the volume
border or with too few voxels are skipped (listed in the report). A case that fails is reported
and skipped; the exit status is 1 when any case failed. Each processed case is left with exactly
the crops of its current inputs: crops of an earlier run that this run did not write (a vertebra
relabelled or now skipped, or the case failed) are deleted and listed.

Example:  python straighten/straighten_mask_3d.py --root DIR --workers 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from data.crops import DEFAULT_CROP_SIZE, DEFAULT_SPACING_MM
from data.image_io import ImageIOError
from data.labels import LABEL_SCHEMES
from straighten.pipeline import CaseResult, straighten_root
from util.fileio import OutputDirError, prepare_output_dir


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("./dataset"),
                        help="dataset root holding raw/<case>/ folders (the published layout: ./dataset)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <root>/straightened)")
    parser.add_argument("--workers", type=int, default=1, help="cases processed in parallel (processes; default 1)")
    parser.add_argument("--crop_size", type=int, nargs=3, default=list(DEFAULT_CROP_SIZE), metavar=("D0", "D1", "D2"),
                        help="crop shape in voxels: superior-inferior, anterior-posterior, right-left "
                             "(default 256 256 64)")
    parser.add_argument("--spacing", type=float, default=DEFAULT_SPACING_MM,
                        help="isotropic crop voxel size in mm (default 1.0)")
    parser.add_argument("--cases", nargs="*", default=None, help="only these case folder names (default: all)")
    parser.add_argument("--label_scheme", choices=LABEL_SCHEMES, default="verse",
                        help="mask ids: VerSe, or TotalSegmentator v2 'total' (vertebrae_L5=27 ... vertebrae_C1=50)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def format_report(results: list[CaseResult]) -> str:
    """Human-readable per-case report: crops written, vertebrae skipped, notes and errors."""
    lines = []
    for result in results:
        if result.failed:
            lines.append(f"FAILED {result.case}: {result.error}")
        else:
            lines.append(f"ok     {result.case}: {len(result.written)} crop(s)")
            lines.extend(f"       skipped {key}: {why}" for key, why in result.skipped.items())
            lines.extend(f"       note: {note}" for note in result.notes)
        if result.removed:
            lines.append(f"       removed {len(result.removed)} obsolete crop(s) of an earlier run: "
                         f"{', '.join(result.removed)}")
    failed = sum(r.failed for r in results)
    crops = sum(len(r.written) for r in results)
    lines.append(f"{len(results)} case(s), {crops} crop(s) written, {failed} case(s) failed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the batch; exit status 0 when every case succeeded, 1 otherwise."""
    args = build_parser().parse_args(argv)
    if args.spacing <= 0 or min(args.crop_size) < 1 or args.workers < 1:
        print("error: --spacing must be > 0, --crop_size values >= 1 and --workers >= 1", file=sys.stderr)
        return 2
    if not (args.root / "raw").is_dir():
        print(f"error: {args.root / 'raw'}: raw data folder not found "
              "(give --root DIR, the folder holding raw/<case>/)",
              file=sys.stderr)
        return 1
    out = args.out if args.out is not None else args.root / "straightened"
    progress = None if args.quiet else (lambda total: tqdm(total=total, desc="straighten", unit="case"))
    try:
        for folder in (out / "CT", out / "label"):
            prepare_output_dir(folder, "straightened crop folder (--out)")
        results = straighten_root(args.root, out, tuple(args.crop_size), args.spacing, args.workers, args.cases,
                                  progress, args.label_scheme)
    except (ImageIOError, OutputDirError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_report(results))
    if not results:
        print(f"error: no case folders under {args.root / 'raw'} (give --root DIR, the folder holding raw/<case>/)",
              file=sys.stderr)
        return 1
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
