"""PSNR/SSIM/Dice/IoU/RVD of synthesized vertebrae on healthy val vertebrae, sagittal slices
(docs/design.md, 'Generation metrics').

Writes a per-vertebra CSV (--out) and a summary JSON beside it (<out stem>_summary.json).

Without flags it reads the published layout: ./dataset/straightened/{CT,label},
./output/{CT_fake,label_fake} and ./vertebra_data.json (else ./dataset/vertebra_data.json), and writes
evaluation/generation_metric/generation_sagittal.csv.

Example:
    python evaluation/generation_eval_sagittal.py --dataroot DIR/straightened --fake_dir R/N \\
        --split_json F --out R/N/generation.csv
"""

import argparse
import sys
from pathlib import Path

from data.crops import SPLITS, read_split
from evaluation.generation_metrics import (
    IMAGE_METRICS,
    OVERLAP_METRICS,
    GenerationSettings,
    generation_table,
    summarize,
)
from util import published_layout
from util.cli import DefaultsHelpFormatter
from util.fileio import atomic_path, prepare_output_dir, write_json

DEFAULT_DATAROOT = "./dataset/straightened"
DEFAULT_FAKE_DIR = "./output"
DEFAULT_SPLIT_JSON = " or ".join(str(p) for p in published_layout.SPLIT_JSON_CANDIDATES)
DEFAULT_OUT = "evaluation/generation_metric/generation_{plane}.csv"


def build_parser(plane: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.replace("sagittal", plane),
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--dataroot", default=DEFAULT_DATAROOT,
                        help="straightened crops: <dataroot>/{CT,label}/<key>.nii.gz")
    parser.add_argument("--fake_dir", default=DEFAULT_FAKE_DIR,
                        help="synthesis results: <fake_dir>/{CT_fake,label_fake}/")
    parser.add_argument("--split_json", default=None,
                        help=f"split JSON with grades (docs/design.md, 'Split JSON'); default: the first of "
                             f"{DEFAULT_SPLIT_JSON} that exists")
    parser.add_argument("--out", default=DEFAULT_OUT.format(plane=plane), help="per-vertebra CSV")
    defaults = GenerationSettings(plane=plane)
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(defaults.splits),
                        help="splits to evaluate")
    parser.add_argument("--grades", nargs="+", type=int, choices=(0, 1, 2, 3), default=list(defaults.grades),
                        help="Genant grades to evaluate (healthy vertebrae should be reproduced)")
    parser.add_argument("--min_slice_voxels", type=int, default=defaults.min_slice_voxels,
                        help="use slices with more than this many target voxels")
    return parser


def main(argv: list[str] | None = None, plane: str = "sagittal") -> int:
    args = build_parser(plane).parse_args(argv)
    if args.split_json is None:
        args.split_json = published_layout.split_json() or published_layout.SPLIT_JSON_CANDIDATES[0]
    for flag, path, is_there in (("--dataroot", args.dataroot, Path.is_dir), ("--fake_dir", args.fake_dir, Path.is_dir),
                                 ("--split_json", args.split_json, Path.is_file)):
        if not is_there(Path(path)):
            print(f"error: {path}: not found; give {flag}", file=sys.stderr)
            return 2
    try:
        split = read_split(args.split_json)
        prepare_output_dir(Path(args.out).parent, "generation metrics folder (--out)")
        settings = GenerationSettings.from_options(args, plane=plane)
        table, failures = generation_table(args.dataroot, args.fake_dir, split, settings, listed_in=args.split_json)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for message in failures:
        print(f"error: {message}", file=sys.stderr)
    if table.empty:
        print("error: no vertebra could be evaluated; nothing written", file=sys.stderr)
        return 1
    out = Path(args.out)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    summary = {"plane": plane, "splits": args.splits, "grades": args.grades, **summarize(table),
               "failures": failures}
    summary_path = out.with_name(f"{out.stem}_summary.json")
    write_json(summary_path, summary)
    print(f"{plane}: {len(table)} vertebrae" + (f" ({len(failures)} failed)" if failures else ""))
    for metric in (*IMAGE_METRICS, *OVERLAP_METRICS):
        print(f"  {metric:>16}: {summary['mean'][metric]:.4f} +/- {summary['std'][metric]:.4f}")
    print(f"written: {out}, {summary_path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
