"""Genant grading of RHLV tables with a linear SVM: 5-fold CV on train+test, scored on val
(docs/design.md, 'SVM grading').

Writes <out>/grading.json, <out>/grading.txt and <out>/confusion_matrices.png.

Without flags it reads evaluation/RHLV_quantification/rhlv.csv (what
RHLV_quantification.py writes by default) and writes evaluation/classification_metric/.

Example:
    python evaluation/SVM_grading.py --rhlv R/N/rhlv.csv --out R/N/grading
    python evaluation/SVM_grading.py --protocol reference  # the published code's folds and scaler
    python evaluation/SVM_grading.py --rhlv R/N/rhlv.csv --rhlv_coronal R/N/rhlv_coronal.csv --out R/N/grading_2.5d
    python evaluation/SVM_grading.py --rhlv R/N/rhlv.csv --out R/N/grading --save_grader R/N/grader.skops
"""

import argparse
import sys
import warnings
from pathlib import Path

from evaluation.grader import fit_grader, save_grader
from evaluation.grading import (
    GradingSettings,
    GradingWarning,
    evaluate_grading,
    feature_table,
    grading_summary,
    prepare_grading_data,
)
from evaluation.plots import grading_confusion_panels, save_confusion_matrices
from evaluation.rhlv_table import read_table
from util.cli import DefaultsHelpFormatter
from util.fileio import atomic_write, prepare_output_dir, write_json
from util.protocol import add_protocol_argument

DEFAULT_RHLV = "evaluation/RHLV_quantification/rhlv.csv"
DEFAULT_OUT = "evaluation/classification_metric"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--rhlv", default=DEFAULT_RHLV, help="RHLV table (CSV or XLSX) of RHLV_quantification.py")
    parser.add_argument("--rhlv_coronal", default=None,
                        help="coronal RHLV table: grade on 6 features (sagittal + coronal Pre/Mid/Post)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--n_splits", type=int, default=GradingSettings.n_splits,
                        help="stratified folds of the train+test pool")
    parser.add_argument("--seed", type=int, default=GradingSettings.seed,
                        help="seed of the fold shuffling (healthivert protocol)")
    add_protocol_argument(parser, "folds in table order, one scaler fitted on the whole train+test pool")
    parser.add_argument("--save_grader", default=None,
                        help="also fit the classifier on the whole train+test pool and save it here (skops file) "
                             "for evaluation/grade.py and predict.py")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rhlv == DEFAULT_RHLV and not Path(args.rhlv).is_file():
        print(f"error: {args.rhlv}: RHLV table not found; run evaluation/RHLV_quantification.py first or give "
              f"--rhlv FILE", file=sys.stderr)
        return 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GradingWarning)
        try:
            prepare_output_dir(args.out, "grading output folder (--out)")
            sagittal = read_table(args.rhlv)
            coronal = read_table(args.rhlv_coronal) if args.rhlv_coronal else None
            table, features = feature_table(sagittal, coronal, (str(args.rhlv), str(args.rhlv_coronal)))
            settings = GradingSettings.from_options(args)
            data = prepare_grading_data(table, features, settings.n_splits)
            report = evaluate_grading(data, settings=settings)
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
    with atomic_write(out / "grading.txt", encoding="utf-8") as handle:
        handle.write(summary)
    matrices, titles = grading_confusion_panels(report)
    save_confusion_matrices(matrices, titles, report["classes"], out / "confusion_matrices.png")
    print(summary, end="")
    print(f"written: {out / 'grading.json'}, {out / 'grading.txt'}, {out / 'confusion_matrices.png'}")
    if args.save_grader:
        grader = fit_grader(data, args.protocol)
        print(f"grader fitted on {grader.n_train} train/test vertebrae: {save_grader(grader, args.save_grader)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
