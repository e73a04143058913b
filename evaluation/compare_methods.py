"""The paper's comparison table (Macro-P/R/F1, accuracy; mean ± std over folds) from grading outputs.

Writes <out>/comparison.md, <out>/comparison.csv and <out>/comparison.png (bars with fold spread),
with the paper's VerSe2019 figures beside ours, labelled as published.

Example:
    python evaluation/compare_methods.py --out R/comparison \\
        --runs healthivert=R/healthivert/grading aotgan=R/aotgan/grading \\
               supcon_senet=R/supcon_senet/grading neighbours=R/healthivert/grading_neighbours
    python evaluation/compare_methods.py --out R/comparison --results_dir R      # the layout above

Keys healthivert, aotgan, supcon_senet and neighbours name the paper's methods (other keys are
shown as given). A run whose grading.json is missing or unusable is named on stderr and left out;
the exit status is then 1 (the table of the other runs is still written).
"""

import argparse
import sys
from pathlib import Path

from evaluation.comparison import (
    comparison_markdown,
    comparison_table,
    parse_run_spec,
    read_run,
    same_val_split,
    save_comparison_plot,
)
from util.cli import tolerate_unencodable_stdout
from util.fileio import atomic_write

DEFAULT_LAYOUT = (("healthivert", "healthivert/grading"), ("aotgan", "aotgan/grading"),
                  ("supcon_senet", "supcon_senet/grading"), ("neighbours", "healthivert/grading_neighbours"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--runs", nargs="+", default=None, metavar="KEY=PATH",
                        help="methods to compare: KEY=grading.json or KEY=folder holding it; default: the "
                             "--results_dir layout (healthivert, aotgan, supcon_senet, neighbours)")
    parser.add_argument("--results_dir", default="./results",
                        help="with no --runs: <results_dir>/{healthivert,aotgan,supcon_senet}/grading and "
                             "<results_dir>/healthivert/grading_neighbours")
    parser.add_argument("--cohort", default="", help="cohort name printed above the table (e.g. 'phantom, 8 cases')")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        specs = ([parse_run_spec(spec) for spec in args.runs] if args.runs else
                 [(key, Path(args.results_dir) / sub) for key, sub in DEFAULT_LAYOUT])
    except ValueError as err:
        print(f"compare_methods.py: error: {err}", file=sys.stderr)
        return 1
    runs, failed = [], []
    for key, path in specs:
        try:
            runs.append(read_run(key, path))
        except ValueError as err:
            failed.append(str(err))
            print(f"compare_methods.py: skipped {key}: {err}", file=sys.stderr)
    if not runs:
        print("compare_methods.py: error: no usable grading report", file=sys.stderr)
        return 1
    notes = [] if same_val_split(runs) else [
        "Warning: the runs were scored on different val splits (size or grade counts differ); rows are not comparable."]
    notes += [f"Left out: {message}" for message in failed]
    table = comparison_table(runs)
    markdown = comparison_markdown(table, args.cohort, notes)
    out = Path(args.out)
    with atomic_write(out / "comparison.md", encoding="utf-8") as handle:
        handle.write(markdown)
    with atomic_write(out / "comparison.csv", newline="", encoding="utf-8") as handle:
        table.to_csv(handle, index=False, float_format="%.6f")
    save_comparison_plot(runs, out / "comparison.png")
    print(markdown, end="")
    print(f"written: {out / 'comparison.md'}, {out / 'comparison.csv'}, {out / 'comparison.png'}")
    return 1 if failed else 0


if __name__ == "__main__":
    tolerate_unencodable_stdout()
    sys.exit(main())
