"""Measured effect of each deliberate evaluation fix, one at a time from the published protocol.

RHLV (reference fixture pairs ``<fixtures>/rhlv``, truth = the designed mean relative loss
per third in ``rhlv.json``): the published rule, then the published rule with ONE of our
fixes, then our default protocol (all fixes plus island removal, ``>=`` and no 1e-6 guard):

- inclusive slices: ``[c - n, c + n]`` instead of ``[c - n, c + n)``;
- balanced thirds: equal thirds of the synthesized extent instead of ``int()`` boundaries;
- synthesized footprint: both bodies measured on the columns where the synthesized body
  reaches ``threshold`` x its centre column (and the original has voxels), instead of each
  body on its own columns.

The same variants on a hand-made anterior-wedge series (box bodies 36 rows x 36 columns
x 32 slices, heights falling linearly to ``1 - a`` at the anterior wall, a = 0.2..0.7;
truth = designed mean loss per equal third).

Grading (``<fixtures>/svm/rhlv_table.csv``): the published protocol, + per-fold scaler,
+ shuffled folds (seeds 0..N-1), both (our default).

    python benchmarks/bench_protocol_fixes.py --fixtures ../shared/data/reference [--seeds 20]
"""

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from data.image_io import load_mask
from data.labels import parse_key
from data.synthesis_layout import OutputLayout
from evaluation.grading import GradingSettings, evaluate_grading, feature_table, prepare_grading_data
from evaluation.rhlv import (
    RHLV_REGIONS,
    central_slab,
    measure_columns,
    plane_heights,
    rhlv_for_vertebra,
    target_heights,
)
from evaluation.rhlv_reference import (
    PUBLISHED_EPSILON,
    published_columns,
    published_means,
    published_slab,
    rhlv_reference_for_vertebra,
)

RHLV_VARIANTS = ("published", "+ inclusive slices", "+ balanced thirds", "+ synthesized footprint", "healthivert")


def variant_rhlv(original: np.ndarray, synthesized: np.ndarray, label: int, variant: str,
                 threshold: float) -> dict[str, float]:
    """RHLV per region of one pair under the published rule with at most one fix (or our default)."""
    if variant == "healthivert":
        return rhlv_for_vertebra(original, synthesized, label, height_threshold=threshold).rhlv
    ori = plane_heights(target_heights(original, label, 0.0).counts, "sagittal")
    syn = plane_heights(target_heights(synthesized, label, 0.0).counts, "sagittal")
    if variant == "+ inclusive slices":
        first, last = central_slab(ori, 5)
        slab = (first, last + 1)
    else:
        slab = published_slab(ori, 5)
    region = measure_columns(syn, ori, threshold).region if variant == "+ balanced thirds" else None
    columns = published_columns(syn, ori, threshold, region)
    if variant == "+ synthesized footprint":
        on_original = ori > 0
        columns = dataclasses.replace(columns, keep_original=columns.keep_reference_regional & on_original,
                                      keep_reference_regional=columns.keep_reference_regional & on_original,
                                      keep_reference_whole=columns.keep_reference_whole & on_original)
    reference, measured = published_means(columns, ori, slab)
    return {r: (reference[r] - measured[r]) / (reference[r] + PUBLISHED_EPSILON) for r in RHLV_REGIONS}


def rhlv_effects(fixtures: Path, threshold: float) -> pd.DataFrame:
    folder = fixtures / "rhlv"
    cases = json.loads((folder / "rhlv.json").read_text(encoding="utf-8"))["cases"]
    rows = []
    for case in cases:
        key = case["vertebra"]
        label = parse_key(key)[1]
        original = load_mask(folder / "label" / f"{key}.nii.gz").array
        synthesized = load_mask(OutputLayout(folder).label(key)).array
        truth = case["design_mean_relative_loss"]
        for variant in RHLV_VARIANTS:
            rhlv = variant_rhlv(original, synthesized, label, variant, threshold)
            rows.extend({"variant": variant, "case": key, "compression": case["compression"], "region": r,
                         "rhlv": rhlv[r], "error": rhlv[r] - truth[r]} for r in RHLV_REGIONS)
    return pd.DataFrame(rows)


WEDGE_SHAPE, WEDGE_LABEL, WEDGE_ROWS, WEDGE_DEPTH, WEDGE_SLICES = (96, 64, 48), 20, 36, 36, 32
WEDGE_AMOUNTS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def wedge_pair(amount: float) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(original, synthesized, designed loss per region) of an anterior wedge; the top endplate collapses."""
    u = (np.arange(WEDGE_DEPTH) + 0.5) / WEDGE_DEPTH  # anterior -> posterior
    heights = np.rint(WEDGE_ROWS * (1 - amount * (1 - u))).astype(int)
    healthy, wedge = np.zeros(WEDGE_SHAPE, np.int16), np.zeros(WEDGE_SHAPE, np.int16)
    top, first, slices = 30, 14, slice(8, 8 + WEDGE_SLICES)
    healthy[top: top + WEDGE_ROWS, first: first + WEDGE_DEPTH, slices] = WEDGE_LABEL
    for column, height in enumerate(heights):
        wedge[top + WEDGE_ROWS - height: top + WEDGE_ROWS, first + column, slices] = WEDGE_LABEL
    loss = 1 - heights / WEDGE_ROWS
    thirds = np.array_split(loss, 3)
    truth = {"all": float(loss.mean()), **{r: float(t.mean()) for r, t in zip(("pre", "mid", "post"), thirds)}}
    return wedge, healthy, truth


def wedge_effects(threshold: float) -> pd.DataFrame:
    rows = []
    for amount in WEDGE_AMOUNTS:
        original, synthesized, truth = wedge_pair(amount)
        for variant in RHLV_VARIANTS:
            rhlv = variant_rhlv(original, synthesized, WEDGE_LABEL, variant, threshold)
            rows.extend({"variant": variant, "case": f"wedge {amount:.1f}", "region": r, "rhlv": rhlv[r],
                         "error": rhlv[r] - truth[r]} for r in RHLV_REGIONS)
    return pd.DataFrame(rows)


def print_effects(effects: pd.DataFrame, title: str) -> None:
    published = effects[effects["variant"] == "published"].set_index(["case", "region"])["rhlv"]
    print(f"\n{title}: error against the designed loss over {effects['case'].nunique()} pairs x 4 regions")
    print("| variant | mean abs error | max abs error | pre mean abs error | max change vs published |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for variant in RHLV_VARIANTS:
        part = effects[effects["variant"] == variant]
        change = (part.set_index(["case", "region"])["rhlv"] - published).abs().max()
        pre = part[part["region"] == "pre"]["error"].abs().mean()
        print(f"| {variant} | {part['error'].abs().mean():.4f} | {part['error'].abs().max():.4f} | {pre:.4f} | "
              f"{change:.4f} |")


def cpu_ms(function, repeats: int) -> float:
    """Median CPU milliseconds of ``function()``."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times)


def timing(fixtures: Path, repeats: int) -> tuple[float, float]:
    """Median over the fixture pairs of the median CPU time per vertebra: reference rule, our default."""
    folder, reference, ours = fixtures / "rhlv", [], []
    for path in sorted((folder / "label").glob("*.nii.gz")):
        label = parse_key(path.name[: -len(".nii.gz")])[1]
        original, synthesized = load_mask(path).array, load_mask(OutputLayout(folder).label_dir / path.name).array
        pair = (original, synthesized, label)
        reference.append(cpu_ms(lambda pair=pair: rhlv_reference_for_vertebra(*pair), repeats))
        ours.append(cpu_ms(lambda pair=pair: rhlv_for_vertebra(*pair), repeats))
    return statistics.median(reference), statistics.median(ours)


def grading_effects(fixtures: Path, seeds: int) -> pd.DataFrame:
    table, features = feature_table(pd.read_csv(fixtures / "svm" / "rhlv_table.csv"))
    data = prepare_grading_data(table, features)
    rows = []
    for name, shuffle, per_fold in (("published", False, False), ("+ per-fold scaler", False, True),
                                    ("+ shuffled folds", True, False), ("healthivert", True, True)):
        for seed in range(seeds if shuffle else 1):
            report = evaluate_grading(data, settings=GradingSettings(5, seed, shuffle, per_fold))
            rows.append({"variant": name, "seed": seed, **report["mean"]})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", required=True, type=Path, help="reference fixture folder (rhlv/, svm/)")
    parser.add_argument("--seeds", type=int, default=20, help="fold-shuffling seeds for the shuffled variants")
    parser.add_argument("--repeats", type=int, default=9, help="timing runs per vertebra")
    args = parser.parse_args(argv)
    reference_ms, ours_ms = timing(args.fixtures, args.repeats)
    print(f"RHLV computation per vertebra (median CPU): --protocol reference {reference_ms:.1f} ms, "
          f"healthivert {ours_ms:.1f} ms (ratio {reference_ms / ours_ms:.2f})")
    for threshold in (0.7, 0.64):
        print_effects(rhlv_effects(args.fixtures, threshold), f"RHLV of the fixture pairs, threshold {threshold}")
        print_effects(wedge_effects(threshold), f"RHLV of the anterior-wedge series, threshold {threshold}")
    grading = grading_effects(args.fixtures, args.seeds)
    print(f"\nGrading of svm/rhlv_table.csv (mean over 5 folds; shuffled variants: mean +/- sd over "
          f"{args.seeds} seeds)")
    print("| variant | macro F1 | macro precision | macro recall | accuracy |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for variant, part in grading.groupby("variant", sort=False):
        cells = [f"{part[m].mean():.4f}" + (f" +/- {part[m].std():.4f}" if len(part) > 1 else "")
                 for m in ("macro_f1", "macro_precision", "macro_recall", "accuracy")]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    unshuffled = grading[~grading["variant"].str.contains("shuffled|healthivert")]
    metrics = ["macro_f1", "macro_precision", "macro_recall", "accuracy"]
    print(f"max |published - per-fold scaler| over the mean metrics: "
          f"{np.abs(np.diff(unshuffled[metrics].to_numpy(), axis=0)).max():.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
