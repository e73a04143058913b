"""Generate a synthetic spine CT cohort with known fractures and truth (docs/design.md, 'Phantom truth').

    python data/make_phantoms.py --out DIR --cases N --seed S

writes ``DIR/raw/<case>/<case>.nii.gz`` (int16 HU), ``<case>_msk.nii.gz`` (uint8
VerSe labels), ``<case>_truth.json`` and ``DIR/vertebra_data.json`` (split with
Genant grades). See the ``data/phantoms/`` package for the anatomy and the truth definitions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.phantoms.cohort import make_cohort
from data.phantoms.spec import parse_vertebra_range
from util.fileio import prepare_output_dir


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("phantom_cohort"),
                        help="output folder (raw/ and vertebra_data.json)")
    parser.add_argument("--cases", type=int, default=12, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (same seed -> identical files)")
    parser.add_argument("--vertebrae", default="T10-L5", help="vertebra range per case, e.g. T10-L5, T12-L4, C1-L5")
    parser.add_argument("--orientation", default=None,
                        help="axis codes for every case (e.g. RAS, LPS, PIR); default: random per case")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("S0", "S1", "S2"),
                        help="voxel size (mm) per array axis; default: random per case (0.7-1.0 in-plane, 1-3 slice)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, metavar=("N0", "N1", "N2"),
                        help="fixed array shape (e.g. 512 512 800 whole spine); default: fitted to the anatomy")
    parser.add_argument("--margin_mm", type=float, default=12.0,
                        help="field-of-view margin around the vertebrae (fitted FOV)")
    parser.add_argument("--noise_hu", type=float, default=None,
                        help="image noise SD in HU; default: random 8-20 per case")
    parser.add_argument("--mild_deformity_rate", type=float, default=0.15,
                        help="fraction of healthy vertebrae with a mild grade-0 deformity (loss 5-15 %%)")
    parser.add_argument("--workers", type=int, default=1, help="cases generated in parallel (processes)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Generate the cohort; exit status 1 (with one line per failed case) if any case failed."""
    args = build_parser().parse_args(argv)
    try:
        labels = parse_vertebra_range(args.vertebrae)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        prepare_output_dir(args.out, "phantom cohort folder (--out)", create=False)
        truths, failures = make_cohort(
            args.out,
            args.cases,
            args.seed,
            workers=args.workers,
            progress=not args.no_progress,
            labels=labels,
            orientation=args.orientation.upper() if args.orientation else None,
            spacing_mm=tuple(args.spacing) if args.spacing else None,
            shape=tuple(args.shape) if args.shape else None,
            noise_hu=args.noise_hu,
            margin_mm=args.margin_mm,
            mild_deformity_rate=args.mild_deformity_rate,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {args.cases} cases failed; no split written", file=sys.stderr)
        return 1
    fractured = sum(v["grade"] > 0 for t in truths for v in t["vertebrae"])
    total = sum(len(t["vertebrae"]) for t in truths)
    print(f"wrote {len(truths)} cases ({fractured}/{total} vertebrae fractured) and {args.out / 'vertebra_data.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
