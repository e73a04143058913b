"""RHLV table (and height-loss maps) of synthesized vertebrae against the originals (docs/design.md, 'RHLV').

Without flags it reads the published layout: ./dataset/straightened/label,
./output/label_fake and ./vertebra_data.json (else ./dataset/vertebra_data.json), and writes
evaluation/RHLV_quantification/rhlv.csv (the table SVM_grading.py reads by default).

Example:
    python evaluation/RHLV_quantification.py --label_dir DIR/straightened/label \\
        --fake_dir R/N/label_fake --split_json F --out R/N/rhlv.csv --reference both --maps R/N/maps
    python evaluation/RHLV_quantification.py --protocol reference  # the published code's numbers
"""

import argparse
import sys
from pathlib import Path

from data.crops import read_split
from data.planes import PLANES
from data.synthesis_layout import OutputLayout
from evaluation.plots import DEFAULT_MAP_VMAX
from evaluation.rhlv import MeasureOptions
from evaluation.rhlv_table import (
    MapSettings,
    default_workers,
    rhlv_tables,
    split_in_file_order,
    write_table,
)
from util import published_layout
from util.cli import DefaultsHelpFormatter
from util.fileio import prepare_output_dir
from util.protocol import add_protocol_argument

DEFAULT_LABEL_DIR = "./dataset/straightened/label"
DEFAULT_FAKE_DIR = f"./{OutputLayout(published_layout.OUTPUT_DIR).label_dir}"  # ./output/label_fake
DEFAULT_SPLIT_JSON = " or ".join(str(p) for p in published_layout.SPLIT_JSON_CANDIDATES)
DEFAULT_OUT = "evaluation/RHLV_quantification/rhlv.csv"


def build_parser() -> argparse.ArgumentParser:
    defaults = MeasureOptions()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--label_dir", default=DEFAULT_LABEL_DIR,
                        help="original label crops <key>.nii.gz (straightened/label)")
    parser.add_argument("--fake_dir", default=DEFAULT_FAKE_DIR,
                        help="synthesized label crops <key>.nii.gz (R/N/label_fake); not read by --reference "
                             "neighbours")
    parser.add_argument("--split_json", default=None,
                        help=f"split JSON (docs/design.md, 'Split JSON') giving each vertebra's grade and split; "
                             f"default the first of {DEFAULT_SPLIT_JSON} that exists, else every crop of --label_dir "
                             f"is measured and Label/Dataset stay empty")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output CSV (the neighbour baseline of --reference both "
                                                           "goes to <out stem>_neighbours.csv)")
    parser.add_argument("--reference", choices=("synthesized", "neighbours", "both"), default="synthesized",
                        help="pseudo-healthy reference: the synthesized labels, the non-learned neighbour "
                             "interpolation baseline, or both")
    parser.add_argument("--plane", choices=PLANES, default=defaults.plane,
                        help="sagittal: thirds anterior/middle/posterior; coronal: thirds right/middle/left "
                             "(reported in the Pre/Mid/Post columns)")
    parser.add_argument("--height_threshold", type=float, default=defaults.height_threshold,
                        help="measure columns at least this fraction of the reference's centre column (the "
                             "published main() passes 0.7; its function default is 0.64)")
    parser.add_argument("--length_divisor", type=int, default=defaults.length_divisor,
                        help="measure slices within +/- extent // divisor of the centre slice")
    parser.add_argument("--min_component_fraction", type=float, default=None,
                        help=f"drop target islands smaller than this fraction of its voxels (default "
                             f"{defaults.min_component_fraction:g}; "
                             "--protocol reference keeps every voxel)")
    parser.add_argument("--healthy_min_relative_height", type=float, default=defaults.healthy_min_relative_height,
                        help="baseline: a neighbour is healthy-looking when min/max of its regional heights, "
                             "and its height relative to the target's tallest region, reach this (healthy "
                             "lumbar bodies with concave endplates measure 0.72-0.92)")
    parser.add_argument("--maps", default=None, help="folder for per-vertebra height-loss map PNGs")
    parser.add_argument("--map_vmax", type=float, default=DEFAULT_MAP_VMAX,
                        help="upper end of the shared colour scale of the maps (relative loss)")
    parser.add_argument("--xlsx", action="store_true", help="also write the table as XLSX beside the CSV")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: one per core, at most 8)")
    add_protocol_argument(parser, "half-open slice range, int() thirds, each body thresholded against its own "
                                  "centre column, no island removal; synthesized reference only")
    return parser


def _split_json(args: argparse.Namespace) -> Path | None:
    if args.split_json is not None:
        return Path(args.split_json)
    if published_layout.split_json() is not None:
        return published_layout.split_json()
    print(f"note: no {DEFAULT_SPLIT_JSON} here: measuring every crop of {args.label_dir} without grades "
          f"(give --split_json FILE for grades and splits)", file=sys.stderr)
    return None


def _output_path(out: Path, reference: str, references: tuple[str, ...]) -> Path:
    if reference == "synthesized" or len(references) == 1:
        return out
    return out.with_name(f"{out.name[: -len(out.suffix)] if out.suffix else out.name}_{reference}{out.suffix}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    references = ("synthesized", "neighbours") if args.reference == "both" else (args.reference,)
    if args.protocol == "reference" and "neighbours" in references:
        print("error: --reference neighbours/both: the neighbour baseline is not part of the published code; "
              "use --protocol healthivert", file=sys.stderr)
        return 2
    for flag, folder in (("--label_dir", args.label_dir), ("--fake_dir", args.fake_dir)):
        if (flag == "--label_dir" or "synthesized" in references) and not Path(folder).is_dir():
            print(f"error: {folder}: folder not found; give {flag} DIR", file=sys.stderr)
            return 2
    try:
        options = MeasureOptions.from_options(args)
        split_path = _split_json(args)
        split = read_split(split_path) if split_path else None
        if split is not None and options.protocol == "reference":
            split = split_in_file_order(split, split_path)
        prepare_output_dir(Path(args.out).parent, "RHLV table folder (--out)")
        if args.maps:
            prepare_output_dir(args.maps, "height-loss map folder (--maps)")
        maps = MapSettings(Path(args.maps) if args.maps else None, args.map_vmax)
        workers = args.workers if args.workers > 0 else default_workers()
        result = rhlv_tables(args.label_dir, args.fake_dir, split, references, options, maps, workers,
                             listed_in=split_path or args.label_dir)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    status = 0
    out = Path(args.out)
    for reference in references:
        table, failures = result.tables[reference], result.failures[reference]
        for message in failures:
            print(f"error: {message}", file=sys.stderr)
        if failures:
            status = 1
        if table.empty:
            print(f"error: no vertebra could be measured against the {reference} reference; nothing written",
                  file=sys.stderr)
            status = 1
            continue
        paths = write_table(table, _output_path(out, reference, references), args.xlsx)
        print(f"{reference}: {len(table)} vertebrae -> {', '.join(str(p) for p in paths)}"
              + (f" ({len(failures)} failed)" if failures else ""))
        if table["Label"].notna().any():
            summary = table.groupby("Label")[["Pre RHLV", "Mid RHLV", "Post RHLV"]].mean()
            print(f"mean RHLV by Genant grade ({reference}, {args.plane}):\n{summary.round(3).to_string()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
