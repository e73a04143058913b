"""Grade the vertebrae of an RHLV table (no grades needed) with a saved grader.

The grader comes from ``evaluation/SVM_grading.py --save_grader FILE``. The output table has the
vertebra, its predicted Genant grade and the grader's per-grade scores (one-vs-rest decision values,
the highest wins); rows missing a feature get no grade.

Example:
    python evaluation/grade.py --rhlv R/N/rhlv.csv --grader R/N/grader.skops --out R/N/grades.csv
"""

import argparse
import sys
from pathlib import Path

from evaluation.grader import grade_features, load_grader
from evaluation.grading import CORONAL_SUFFIX
from evaluation.rhlv import RHLV_FEATURES
from evaluation.rhlv_table import read_table, write_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rhlv", required=True, help="RHLV table (CSV or XLSX) of RHLV_quantification.py")
    parser.add_argument("--rhlv_coronal", default=None, help="coronal RHLV table, for a grader fitted on 6 features")
    parser.add_argument("--grader", required=True, help="grader file of SVM_grading.py --save_grader")
    parser.add_argument("--out", required=True, help="output table (.csv; .xlsx also writes an Excel copy)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        grader = load_grader(args.grader)
        table = read_table(args.rhlv)
        if args.rhlv_coronal:
            coronal = read_table(args.rhlv_coronal)[["Vertebra", *RHLV_FEATURES]]
            table = table.merge(coronal.rename(columns={c: c + CORONAL_SUFFIX for c in RHLV_FEATURES}),
                                on="Vertebra", how="left")
        grades = grade_features(grader, table, str(args.rhlv))
    except (ValueError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = Path(args.out)
    written = write_table(grades, out.with_suffix(".csv"), xlsx=out.suffix == ".xlsx")
    graded = int(grades["Predicted grade"].notna().sum())
    print(f"{graded} of {len(grades)} vertebrae graded with {args.grader} (protocol {grader.protocol}): "
          f"{', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
