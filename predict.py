"""Apply a trained HealthiVert-GAN to one new CT: per-vertebra heights, RHLV and Genant grades, an HTML
report and NIfTI overlays on the scan's own grid.

Input: the CT (NIfTI file or DICOM series folder) and its vertebra mask on the same grid, with VerSe
ids (``--label_scheme verse``) or TotalSegmentator v2 ``total`` ids (``--label_scheme totalseg``;
vertebrae_L5 = 27 ... vertebrae_C1 = 50, other structures ignored; add ``--body_mask`` with the
``vertebrae_body`` output to keep the bodies only). Without a mask, ``--segment`` runs
TotalSegmentator when it is installed with its weights.

Outputs in --out: vertebrae.csv and vertebrae.json (one row per vertebra: heights in mm and RHLV per
region, grade, per-grade scores with --grader, suggested morphology, status and reason for vertebrae
that could not be measured), report.html (self-contained), pseudo_healthy_ct.nii.gz, grades.nii.gz
(grade + 1 on each graded vertebra's voxels, 0 elsewhere), rhlv.nii.gz (largest regional RHLV per
vertebra) on the input CT's grid and affine, and centroids.mrk.json (3D Slicer markups, LPS).

The crops are straightened with the crop size and spacing the model was trained on (read from its
checkpoint); --crop_size / --spacing / --plane that differ from the model's are refused, and so is a
--classifier trained on crops of another size or spacing (recorded in its checkpoint).

Example:
    python predict.py --ct scan.nii.gz --mask scan_seg.nii.gz --label_scheme totalseg --name healthivert \\
        --grader results/healthivert/grader.skops --out predictions/scan
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.labels import LABEL_SCHEMES
from evaluation.rhlv import REFERENCES


def build_parser() -> argparse.ArgumentParser:
    from Attention.map_choices import CAM_NORMALISATIONS, CAM_WINDOWS
    from models.compilation import add_compile_option
    from pipeline.predict import PredictSettings

    defaults = PredictSettings
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", required=True, type=Path, help="CT: NIfTI file or DICOM series folder (HU)")
    parser.add_argument("--mask", type=Path, default=None, help="vertebra label mask on the CT's grid (NIfTI)")
    parser.add_argument("--label_scheme", choices=LABEL_SCHEMES, default=defaults.label_scheme,
                        help="ids of --mask: VerSe (1-25, 28) or TotalSegmentator v2 'total' (27-50)")
    parser.add_argument("--body_mask", type=Path, default=None,
                        help="TotalSegmentator 'vertebrae_body' mask (1 = body): keep only body voxels of --mask")
    parser.add_argument("--segment", action="store_true",
                        help="no --mask: segment the vertebrae with TotalSegmentator (if installed with weights)")
    parser.add_argument("--name", required=True, help="generator checkpoint name (<checkpoints_dir>/<name>/)")
    parser.add_argument("--checkpoints_dir", type=Path, default=defaults.checkpoints_dir,
                        help="where models are stored")
    parser.add_argument("--epoch", default=defaults.epoch, help="checkpoint to load (<epoch>.pth)")
    parser.add_argument("--classifier", default=None,
                        help="fracture classifier name for attention maps (default: none, zero attention)")
    parser.add_argument("--cam_normalise", choices=CAM_NORMALISATIONS, default=defaults.cam_normalise,
                        help="--normalise of the attention maps: use the value the generator's training maps had "
                             "(demo.py: volume)")
    parser.add_argument("--cam_windows", choices=CAM_WINDOWS, default=defaults.cam_windows,
                        help="--windows of the attention maps (Attention/grad_CAM_3d_sagittal.py)")
    parser.add_argument("--grader", type=Path, default=None,
                        help="grader of SVM_grading.py --save_grader (default: Genant's 20/25/40 %% thresholds)")
    parser.add_argument("--reference", choices=REFERENCES, default=defaults.reference,
                        help="heights against the synthesized vertebra or the nearest healthy neighbours (baseline)")
    parser.add_argument("--plane", choices=("sagittal", "coronal"), default=None,
                        help="synthesis plane (default: the model's)")
    parser.add_argument("--crop_size", type=int, nargs=3, default=None, metavar=("D0", "D1", "D2"),
                        help="crop shape (default: the model's)")
    parser.add_argument("--spacing", type=float, default=None, help="crop voxel size in mm (default: the model's)")
    parser.add_argument("--case", default=None, help="case id used in vertebra keys (default: from the CT name)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--gpu_ids", default=defaults.gpu_ids, help="GPU ids, e.g. 0; -1 for CPU")
    parser.add_argument("--keep_work", action="store_true", help="keep the intermediate crops and maps in --out")
    parser.add_argument("--no_report", action="store_true", help="skip report.html")
    add_compile_option(parser)  # the synthesis generator; pays off only for many vertebrae (compile time)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the prediction; 0 on success, 1 with a one-line reason on bad input."""
    args = build_parser().parse_args(argv)
    from pipeline.predict import PredictSettings, predict_scan
    from pipeline.segment import SegmentationUnavailable, segment_vertebrae

    try:
        mask, scheme = args.mask, args.label_scheme
        if mask is None:
            if not args.segment:
                raise ValueError("no --mask given: pass a vertebra mask, or --segment to run TotalSegmentator")
            mask, scheme = segment_vertebrae(args.ct, args.out / "totalseg_vertebrae.nii.gz", args.gpu_ids), "totalseg"
        settings = PredictSettings.from_options(
            args, mask=mask, label_scheme=scheme, crop_size=tuple(args.crop_size) if args.crop_size else None,
            report=not args.no_report)
        result = predict_scan(settings)
    except SegmentationUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError, KeyError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    table = result.table
    for row in table.itertuples():
        if row.status == "ok":
            print(f"{row.name:>4}: grade {int(row.grade)} {row.morphology:<9} RHLV ant {row.RHLV_anterior:.2f} "
                  f"mid {row.RHLV_middle:.2f} post {row.RHLV_posterior:.2f}")
        else:
            print(f"{row.name:>4}: {row.status} ({row.reason})")
    print(f"grading: {result.grade_method}")
    for note in result.notes:
        print(f"note: {note}")
    print("written: " + ", ".join(str(path) for path in result.files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
