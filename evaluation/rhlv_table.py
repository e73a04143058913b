"""RHLV tables over folders of original and synthesized label crops
(docs/design.md, 'Straightened crops', 'Synthesis outputs and provenance' and 'RHLV table').

One row per vertebra ``<case>_<v>``: the original crop ``<label_dir>/<key>.nii.gz``,
the synthesized crop ``<fake_dir>/<key>.nii.gz`` (reference ``synthesized``) or the
neighbours in the original crop (reference ``neighbours``, no model needed).
A vertebra that cannot be measured is reported and the others are still written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from data.crops import refuse_missing_crops
from data.image_io import ImageIOError, Volume, check_same_grid, load_mask
from data.labels import parse_key
from evaluation.plots import DEFAULT_MAP_VMAX, save_height_loss_map
from evaluation.rhlv import (
    REFERENCES,
    RHLV_COLUMNS,
    MeasureOptions,
    RHLVError,
    RHLVResult,
    rhlv_for_vertebra,
    rhlv_neighbours_for_vertebra,
)
from evaluation.rhlv_reference import rhlv_reference_for_vertebra
from util.fileio import atomic_path, read_json
from util.parallel import map_items

NIFTI_SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class VertebraJob:
    """One vertebra to measure: where its crops are and what the split says about it."""

    key: str
    label_path: Path
    fake_path: Path | None
    grade: int | None
    dataset: str | None


@dataclass(frozen=True)
class MapSettings:
    """Where and how to draw height-loss maps (``folder`` None: no maps)."""

    folder: Path | None = None
    vmax: float = DEFAULT_MAP_VMAX


@dataclass
class RHLVTables:
    """Result of a table run: one DataFrame and one failure list per reference."""

    tables: dict[str, pd.DataFrame]
    failures: dict[str, list[str]]


def list_jobs(label_dir: str | Path, fake_dir: str | Path | None,
              split: dict[str, dict[str, int]] | None, listed_in: str | Path = "the split") -> list[VertebraJob]:
    """Vertebrae to measure, in split order (train, val, test) or sorted by key without a split.

    A vertebra listed in the split without a label crop stops the run before any work, with the
    full list (``data.crops.refuse_missing_crops``, the rule of every step).
    """
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise ImageIOError(f"{label_dir}: label crop folder not found")
    fake_root = Path(fake_dir) if fake_dir is not None else None
    if fake_root is not None and not fake_root.is_dir():
        raise ImageIOError(f"{fake_root}: synthesized label folder not found")

    def job(key: str, grade: int | None, dataset: str | None) -> VertebraJob:
        fake = fake_root / f"{key}{NIFTI_SUFFIX}" if fake_root is not None else None
        return VertebraJob(key, label_dir / f"{key}{NIFTI_SUFFIX}", fake, grade, dataset)

    if split is None:
        keys = sorted(p.name[: -len(NIFTI_SUFFIX)] for p in label_dir.glob(f"*{NIFTI_SUFFIX}"))
        return [job(key, None, None) for key in keys]
    jobs = [job(key, grade, dataset) for dataset, entries in split.items() for key, grade in entries.items()]
    refuse_missing_crops([j.label_path for j in jobs if not j.label_path.is_file()], listed_in)
    return jobs


def split_in_file_order(split: dict[str, dict[str, int]], path: str | Path) -> dict[str, dict[str, int]]:
    """``split`` with its splits in the order the JSON file lists them (the published code's row order)."""
    order = [name for name in read_json(Path(path)) if name in split]
    return {name: split[name] for name in order + [name for name in split if name not in order]}


def _map_title(job: VertebraJob, result: RHLVResult) -> str:
    grade = "" if job.grade is None else f", Genant grade {job.grade}"
    split = f", {job.dataset}" if job.dataset else ""
    return f"{job.key}: {result.name}{grade}{split}"


def measure_job(job: VertebraJob, references: tuple[str, ...], options: MeasureOptions,
                maps: MapSettings = MapSettings()) -> dict[str, dict | str]:
    """Measure one vertebra against each reference: a table row (dict) or an error message (str)."""
    try:
        original = load_mask(job.label_path)
    except (ImageIOError, OSError) as err:
        return {reference: f"{job.key} ({reference}): {err}" for reference in references}
    outcome: dict[str, dict | str] = {}
    for reference in references:
        try:
            result = _measure_checked(job, reference, original, options)
        except (RHLVError, ImageIOError, OSError, ValueError) as err:
            outcome[reference] = f"{job.key} ({reference}): {err}"
            continue
        if maps.folder is not None:
            suffix = "" if reference == "synthesized" else f"_{reference}"
            save_height_loss_map(result, maps.folder / f"{job.key}{suffix}.png", _map_title(job, result), maps.vmax)
        outcome[reference] = {"Vertebra": job.key, "Label": job.grade, "Dataset": job.dataset,
                              **result.table_values()}
    return outcome


def _measure_checked(job: VertebraJob, reference: str, original: Volume, options: MeasureOptions) -> RHLVResult:
    """Load the synthesized crop when needed, check it lies on the original's grid, measure.

    Every error message names the file(s) involved.
    """
    label = parse_key(job.key)[1]
    common = dict(plane=options.plane, height_threshold=options.height_threshold,
                  length_divisor=options.length_divisor, min_component_fraction=options.min_component_fraction)
    if reference == "neighbours":
        if options.protocol == "reference":
            raise RHLVError("the neighbour baseline is not part of the published code; use --protocol healthivert")
        try:
            return rhlv_neighbours_for_vertebra(original.array, label, original.spacing_mm, **common,
                                                healthy_min_relative_height=options.healthy_min_relative_height)
        except RHLVError as err:
            raise RHLVError(f"{job.label_path}: {err}") from None
    if job.fake_path is None:
        raise RHLVError("no synthesized label folder given (--fake_dir)")
    if not job.fake_path.is_file():
        raise RHLVError(f"{job.fake_path}: synthesized label crop not found")
    fake = load_mask(job.fake_path)
    check_same_grid(original, fake)
    try:
        if options.protocol == "reference":
            return rhlv_reference_for_vertebra(original.array, fake.array, label, original.spacing_mm, options.plane,
                                               options.height_threshold, options.length_divisor)
        return rhlv_for_vertebra(original.array, fake.array, label, original.spacing_mm, **common)
    except RHLVError as err:
        raise RHLVError(f"{job.fake_path} vs {job.label_path}: {err}") from None


def _run_jobs(jobs: list[VertebraJob], references: tuple[str, ...], options: MeasureOptions,
              maps: MapSettings, workers: int) -> Iterator[dict[str, dict | str]]:
    """Each job's outcome (``measure_job``), in job order; a crashed worker process fails its vertebrae."""
    measure = partial(measure_job, references=references, options=options, maps=maps)
    chunksize = max(1, min(16, len(jobs) // (4 * max(workers, 1))))
    for result in map_items(measure, jobs, workers, catch=(), chunksize=chunksize):  # measure_job names its errors
        yield result.value if result.ok else {reference: f"{result.item.key} ({reference}): {result.error}"
                                              for reference in references}


DEFAULT_MEASURE_OPTIONS = MeasureOptions()


def rhlv_tables(label_dir: str | Path, fake_dir: str | Path | None, split: dict[str, dict[str, int]] | None,
                references: Iterable[str] = ("synthesized",), options: MeasureOptions = DEFAULT_MEASURE_OPTIONS,
                maps: MapSettings = MapSettings(), workers: int = 1, progress: bool = True,
                listed_in: str | Path = "the split") -> RHLVTables:
    """Measure every vertebra of ``label_dir`` (or of the split, named ``listed_in`` in errors) against each
    reference."""
    references = tuple(references)
    unknown = set(references) - set(REFERENCES)
    if unknown:
        raise ValueError(f"unknown reference(s) {sorted(unknown)}; expected {list(REFERENCES)}")
    jobs = list_jobs(label_dir, fake_dir if "synthesized" in references else None, split, listed_in)
    rows: dict[str, list[dict]] = {reference: [] for reference in references}
    failures: dict[str, list[str]] = {reference: [] for reference in references}
    outcomes = _run_jobs(jobs, references, options, maps, workers)
    for outcome in tqdm(outcomes, total=len(jobs), desc="RHLV", unit="vertebra", disable=not progress):
        for reference, value in outcome.items():
            (rows[reference] if isinstance(value, dict) else failures[reference]).append(value)
    tables = {reference: pd.DataFrame(rows[reference], columns=RHLV_COLUMNS) for reference in references}
    return RHLVTables(tables, failures)


def write_table(table: pd.DataFrame, path: str | Path, xlsx: bool = False) -> list[Path]:
    """Write an RHLV table as CSV (always) and XLSX beside it (``xlsx``), atomically."""
    path = Path(path)
    written = []
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    written.append(path)
    if xlsx:
        xlsx_path = path.with_suffix(".xlsx")
        with atomic_path(xlsx_path) as tmp:
            table.to_excel(tmp, index=False)
        written.append(xlsx_path)
    return written


def read_table(path: str | Path) -> pd.DataFrame:
    """Read an RHLV table written as CSV or XLSX (by suffix); clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: RHLV table not found")
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            return pd.read_excel(path)
        return pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise ValueError(f"{path}: cannot read the RHLV table ({err})") from err


def default_workers() -> int:
    """Worker processes for table runs: the available cores, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
