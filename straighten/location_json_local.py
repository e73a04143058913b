"""Write the vertebra centroid JSON of every case: ``<root>/raw/<case>/<case>.json``.

For each vertebra label of the case's mask: the whole-vertebra centroid in voxel indices
(``X, Y, Z``, the reference implementation's format), the same point in RAS mm (``world``),
the vertebral-body centroid (``body_voxel``, ``body_world``), its volume, and flags for
vertebrae cut by the volume border or with too few voxels (listed, not dropped).
The exit status is 1 when any case failed.

Example:  python straighten/location_json_local.py --root DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from data.image_io import ImageIOError, list_cases
from data.labels import LABEL_SCHEMES
from straighten.centroids import write_case_centroids


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("./dataset"),
                        help="dataset root holding raw/<case>/ folders (the published layout: ./dataset)")
    parser.add_argument("--cases", nargs="*", default=None, help="only these case folder names (default: all)")
    parser.add_argument("--label_scheme", choices=LABEL_SCHEMES, default="verse",
                        help="mask ids: VerSe, or TotalSegmentator v2 'total' (vertebrae_L5=27 ... vertebrae_C1=50)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write every case's centroid JSON; exit status 0 when all succeeded, 1 otherwise."""
    args = build_parser().parse_args(argv)
    if not (args.root / "raw").is_dir():
        print(f"error: {args.root / 'raw'}: raw data folder not found "
              "(give --root DIR, the folder holding raw/<case>/)",
              file=sys.stderr)
        return 1
    try:
        cases = [c for c in list_cases(args.root) if not args.cases or c.case in set(args.cases)]
    except ImageIOError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not cases:
        print(f"error: no case folders under {args.root / 'raw'} (give --root DIR, the folder holding raw/<case>/)",
              file=sys.stderr)
        return 1
    failed = 0
    for case in tqdm(cases, desc="centroids", unit="case", disable=args.quiet):
        result = write_case_centroids(case, args.label_scheme)
        if result.error:
            failed += 1
            print(f"FAILED {result.case}: {result.error}")
            continue
        flags = f"; flagged: {', '.join(result.flagged)}" if result.flagged else ""
        print(f"ok     {result.case}: {result.path}{flags}")
        for note in result.notes:
            print(f"       note: {note}")
    print(f"{len(cases)} case(s), {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
