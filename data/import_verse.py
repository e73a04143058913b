"""Lay a VerSe'19/'20 download (BIDS layout) out as ``<out>/raw/<case>/`` for the pipeline.

For every ``rawdata/sub-*/..._ct.nii.gz`` with its ``derivatives/.../_seg-vert_msk.nii.gz``: copies
(or, with --symlink, links) them as ``<case>.nii.gz`` and ``<case>_msk.nii.gz`` and writes the
official centroids (``..._ctd.json``) as ``<case>.json`` in the pipeline's format (voxel indices of
the mask array plus RAS mm). Entities (``dir-ax``, ``split-...``) stay in the case id. A scan
without a mask (or whose CT and mask grids differ) is reported; the exit status is then 1.

Example:  python data/import_verse.py --verse_root ~/data/verse20 --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from data.image_io import ImageIOError
from data.verse import find_scans, import_scan


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verse_root", required=True, type=Path, help="VerSe download (holds rawdata/, derivatives/)")
    parser.add_argument("--out", required=True, type=Path, help="dataset root; cases go to <out>/raw/<case>/")
    parser.add_argument("--symlink", action="store_true", help="link the NIfTI files instead of copying them")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        scans = find_scans(args.verse_root)
    except ImageIOError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    failed = 0
    for scan in tqdm(scans, desc="import", unit="scan", disable=args.quiet):
        result = import_scan(scan, args.out, args.symlink)
        if result.error:
            failed += 1
            print(f"FAILED {result.case}: {result.error}")
            continue
        print(f"ok     {result.case}: {result.folder}")
        for note in result.notes:
            print(f"       note: {note}")
    print(f"{len(scans)} scan(s), {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
