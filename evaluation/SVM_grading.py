"""Genant grading of RHLV tables with a linear SVM: 5-fold CV on train+test, scored on val (DESIGN 5).

Writes <out>/grading.json, <out>/grading.txt and <out>/confusion_matrices.png.

Example:
    python evaluation/SVM_grading.py --rhlv R/N/rhlv.csv --out R/N/grading
    python evaluation/SVM_grading.py --rhlv R/N/rhlv.csv --rhlv_coronal R/N/rhlv_coronal.csv --out R/N/grading_2.5d
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import warnings  # noqa: E402

from evaluation.grading import (  # noqa: E402
    GradingWarning,
    evaluate_grading,
    feature_table,
    grading_summary,
    prepare_grading_data,
)
from evaluation.plots import grading_confusion_panels, save_confusion_matrices  # noqa: E402
from evaluation.rhlv_table import read_table  # noqa: E402
from util.cli import HelpFormatter  # noqa: E402
from util.fileio import atomic_write, prepare_output_dir, write_json  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--rhlv", required=True, help="RHLV table (CSV or XLSX) of RHLV_quantification.py")
    parser.add_argument("--rhlv_coronal", default=None,
                        help="coronal RHLV table: grade on 6 features (sagittal + coronal Pre/Mid/Post)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n_splits", type=int, default=5, help="stratified folds of the train+test pool")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold shuffling")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GradingWarning)
        try:
            prepare_output_dir(args.out, "grading output folder (--out)")
            sagittal = read_table(args.rhlv)
            coronal = read_table(args.rhlv_coronal) if args.rhlv_coronal else None
            table, features = feature_table(sagittal, coronal, (str(args.rhlv), str(args.rhlv_coronal)))
            data = prepare_grading_data(table, features, args.n_splits)
            report = evaluate_grading(data, args.n_splits, args.seed)
        except (ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    messages = [str(w.message) for w in caught if issubclass(w.category, GradingWarning)]
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)
    report["warnings"] = messages
    out = Path(args.out)
    summary = grading_summary(report)
    write_json(out / "grading.json", report)
    with atomic_write(out / "grading.txt") as handle:
        handle.write(summary)
    matrices, titles = grading_confusion_panels(report)
    save_confusion_matrices(matrices, titles, report["classes"], out / "confusion_matrices.png")
    print(summary, end="")
    print(f"written: {out / 'grading.json'}, {out / 'grading.txt'}, {out / 'confusion_matrices.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
