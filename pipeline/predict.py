"""From one new CT and its vertebra mask to a graded per-vertebra table and overlays on the scan's grid.

Steps, each through the library function of its step script: centroids (``straighten.centroids``),
straightening (``straighten.pipeline.straighten_case``) with the crop size and spacing the model was
trained on, attention maps when a classifier is given (``Attention.cam.generate_maps``), iterative
synthesis (``models.synthesis.dataset.synthesize_dataset``), RHLV (``evaluation.rhlv_table``) and
grading (a saved grader, ``evaluation.grader``, or Genant's thresholds on the largest regional RHLV,
``evaluation.genant``). Results on the crops are mapped back through the crop sidecars
(``straighten.backproject``), so the NIfTI outputs share the input CT's grid and affine.

Intermediate files go to a work folder inside ``out`` that is removed at the end (``keep_work``
keeps it); the outputs are written only after every step succeeded.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import warnings
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from data.crops import DEFAULT_CROP_SIZE, DEFAULT_SPACING_MM, load_crop
from data.image_io import CaseFiles, check_same_grid, load_ct, load_mask, read_grid, save_nifti
from data.labels import LABEL_SCHEMES, TOTALSEG_TO_VERSE, split_key, totalseg_to_verse, vertebra_name
from data.synthesis_layout import OutputLayout
from evaluation.genant import ANATOMICAL_REGIONS, GENANT_THRESHOLDS, genant_grade, suggested_morphology
from evaluation.grader import SCORE_PREFIX, grade_features, load_grader
from evaluation.rhlv import REFERENCES, MeasureOptions
from evaluation.rhlv_table import MapSettings, rhlv_tables
from models.synthesis.checkpoints import checkpoint_file, load_generator
from straighten.backproject import sample_crop, scan_footprint
from straighten.centroids import case_centroids
from straighten.pipeline import straighten_case
from util.fileio import atomic_path, write_json
from util.settings import FromOptions

REGION_NAMES = {"pre": "anterior", "mid": "middle", "post": "posterior", "all": "whole"}
PASTE_MARGIN_VOXELS = 2  # the pseudo-healthy CT replaces the target's (original or synthesized) voxels plus this
GENANT_METHOD = (f"Genant thresholds {'/'.join(f'{t:.0%}' for t in GENANT_THRESHOLDS)} on the largest regional "
                 "RHLV (no --grader given)")
OUTPUT_FILES = ("vertebrae.csv", "vertebrae.json", "report.html", "pseudo_healthy_ct.nii.gz", "grades.nii.gz",
                "rhlv.nii.gz", "centroids.mrk.json")


class PredictError(ValueError):
    """Input predict cannot use; the message names the file and the problem (one line)."""


@dataclass(frozen=True)
class PredictSettings(FromOptions):
    """What to predict on and with which model (paths as given on the command line); the defaults of
    predict.py's flags. ``None`` for plane, crop size and spacing: the model's."""

    ct: Path
    mask: Path
    name: str
    out: Path
    label_scheme: str = "verse"
    body_mask: Path | None = None
    grader: Path | None = None
    classifier: str | None = None
    cam_normalise: str = "slice"
    cam_windows: str = "auto"
    checkpoints_dir: Path = Path("checkpoints")
    epoch: str = "latest"
    gpu_ids: str = "-1"
    plane: str | None = None
    crop_size: tuple[int, int, int] | None = None
    spacing_mm: float | None = field(default=None, metadata={"option": "spacing"})
    reference: str = "synthesized"
    case: str | None = None
    keep_work: bool = False
    report: bool = True
    compile: bool = False


@dataclass
class PredictResult:
    """The per-vertebra table, the files written and notes for the user."""

    table: pd.DataFrame
    files: dict[str, Path]
    notes: list[str] = field(default_factory=list)
    grade_method: str = GENANT_METHOD


def case_name(ct: Path) -> str:
    """A case id from the CT's file or folder name (``sub-01_ct.nii.gz`` -> ``sub-01``)."""
    name = ct.name.removesuffix(".gz").removesuffix(".nii").removesuffix("_ct").removesuffix("_CT")
    return name.replace(" ", "_") or "case"


def model_geometry(path: Path, options: dict[str, Any],
                   settings: PredictSettings) -> tuple[tuple[int, int, int], float]:
    """Crop size and isotropic spacing (mm) to straighten with: the model's; refuse values that differ."""
    trained_size = options.get("crop_size")
    trained_spacing = options.get("crop_spacing_mm")
    if trained_spacing is not None and np.ptp(np.asarray(trained_spacing, dtype=float)) > 1e-6:
        raise PredictError(f"{path}: model trained on anisotropic crops ({trained_spacing} mm); straightening "
                           "makes isotropic crops")
    size = tuple(int(n) for n in (settings.crop_size or trained_size or DEFAULT_CROP_SIZE))
    spacing = float(settings.spacing_mm or (trained_spacing[0] if trained_spacing is not None else DEFAULT_SPACING_MM))
    if trained_size is not None and list(size) != [int(n) for n in trained_size]:
        raise PredictError(f"{path}: model trained on {list(trained_size)} crops, this scan would be straightened "
                           f"into {list(size)} crops (--crop_size)")
    if trained_spacing is not None and abs(spacing - float(trained_spacing[0])) > 1e-6:
        raise PredictError(f"{path}: model trained on {float(trained_spacing[0]):g} mm crops, this scan would be "
                           f"straightened at {spacing:g} mm (--spacing)")
    return size, spacing


def check_classifier_geometry(settings: PredictSettings, crop_size: tuple[int, int, int], spacing: float) -> str | None:
    """Refuse a classifier trained on crops of another size or spacing (mm); a note when it does not record them."""
    from Attention.checkpoint import checkpoint_path, load_classifier

    path = checkpoint_path(settings.checkpoints_dir, str(settings.classifier))
    _, checkpoint = load_classifier(path)
    trained_size, trained_spacing = checkpoint.get("crop_size"), checkpoint.get("crop_spacing_mm")
    if trained_size is None or trained_spacing is None:
        return f"{path}: the classifier does not record its training crops' size and spacing; not checked"
    if [int(n) for n in trained_size] != list(crop_size):
        raise PredictError(f"{path}: classifier trained on {list(trained_size)} crops, the generator on "
                           f"{list(crop_size)} crops")
    if np.abs(np.asarray(trained_spacing, dtype=float) - spacing).max() > 1e-6:
        raise PredictError(f"{path}: classifier trained on {'x'.join(f'{x:g}' for x in trained_spacing)} mm crops, "
                           f"the generator on {spacing:g} mm crops")
    return None


def verse_mask_file(settings: PredictSettings, work: Path, case: str) -> Path:
    """The mask with VerSe ids: the input for ``verse``, a converted copy in ``work`` for ``totalseg``."""
    if settings.label_scheme not in LABEL_SCHEMES:
        raise PredictError(f"--label_scheme {settings.label_scheme!r}: expected one of {LABEL_SCHEMES}")
    if settings.label_scheme == "verse" and settings.body_mask is None:
        return settings.mask
    mask = load_mask(settings.mask)
    labels = mask.array
    body = None
    if settings.body_mask is not None:
        body_volume = load_mask(settings.body_mask)
        check_same_grid(mask, body_volume)
        body = body_volume.array
    if settings.label_scheme == "totalseg":
        if not np.isin(labels, list(TOTALSEG_TO_VERSE)).any():
            raise PredictError(f"{settings.mask}: no TotalSegmentator vertebra id (27-50, vertebrae_L5..vertebrae_C1) "
                               "in the mask; is it a TotalSegmentator v2 'total' mask?")
        labels = totalseg_to_verse(labels, body)
    elif body is not None:
        labels = np.where(body == 1, labels, 0)
    path = work / "raw" / case / f"{case}_msk.nii.gz"
    save_nifti(labels.astype(np.uint8), mask.affine, path)
    return path


def _without_work_paths(message: str, key: str, work: Path) -> str:
    """A step's failure message without the vertebra key prefix and the names of work-folder files (deleted)."""
    if str(work) in message:
        message = message.rsplit(str(work), 1)[1].split(": ", 1)[-1]
    return re.sub(rf"^{re.escape(key)}( \([a-z]+\))?: ", "", message)


def _status_rows(records: list[dict[str, Any]], case: str) -> dict[str, dict[str, Any]]:
    """One table row per labelled vertebra of the centroid records (status and reason from the border flags)."""
    rows = {}
    for record in records:
        label = int(record["label"])
        world = record.get("body_world", record["world"])
        rows[split_key(case, label)] = {
            "Vertebra": split_key(case, label), "name": vertebra_name(label), "verse_id": label,
            "status": "ok" if record["status"] == "ok" else record["status"], "reason": record.get("reason", ""),
            "centroid_ras_mm": [round(float(x), 2) for x in world],
        }
    return rows


def _synthesize(settings: PredictSettings, dataroot: Path, cam_dir: Path | None, results: Path,
                plane: str) -> dict[str, str]:
    """Iterative synthesis of every crop through ``synthesize_dataset``; returns failures (key -> reason)."""
    from models.synthesis.dataset import synthesize_dataset

    opt = Namespace(dataroot=str(dataroot), cam_dir=None if cam_dir is None else str(cam_dir), name=settings.name,
                    results_dir=str(results), plane=plane, checkpoints_dir=str(settings.checkpoints_dir),
                    epoch=settings.epoch, load_iter=0, gpu_ids=settings.gpu_ids, split=None, split_json=None,
                    num_test=math.inf, overwrite=True, synthesis_batch_size=-1, amp=False, cpu_bf16=False,
                    compile=settings.compile)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no --cam_dir given")
        summary = synthesize_dataset(opt, show_progress=False)
    return dict(summary.failed)


def _attention_maps(settings: PredictSettings, dataroot: Path, out: Path) -> dict[str, str]:
    """Grad-CAM++ maps of every crop through ``generate_maps``; returns failures (key -> reason)."""
    from Attention.cam import generate_maps, parse_cam_options

    opt = parse_cam_options(["--dataroot", str(dataroot), "--name", str(settings.classifier), "--checkpoints_dir",
                             str(settings.checkpoints_dir), "--out", str(out), "--gpu_ids", settings.gpu_ids,
                             "--normalise", settings.cam_normalise, "--windows", settings.cam_windows, "--no_png"])
    return dict(generate_maps(opt)["failed"])


def _grade(table: pd.DataFrame, rhlv: pd.DataFrame, grader_path: Path | None) -> str:
    """Fill grade, scores and morphology of the measured rows of ``table``; returns the method's description."""
    measured = table["status"] == "ok"
    if grader_path is not None:
        grader = load_grader(grader_path)
        graded = grade_features(grader, rhlv.set_index("Vertebra").loc[table.loc[measured, "Vertebra"]].reset_index(),
                                str(grader_path))
        table.loc[measured, "grade"] = graded["Predicted grade"].to_numpy()
        for grade in grader.classes:
            table.loc[measured, f"{SCORE_PREFIX}{grade}"] = graded[f"{SCORE_PREFIX}{grade}"].to_numpy()
        method = f"linear SVM grader {grader_path} (protocol {grader.protocol}, fitted on {grader.n_train} vertebrae)"
    else:
        largest = table.loc[measured, [f"RHLV_{region}" for region in ANATOMICAL_REGIONS]].max(axis=1)
        table.loc[measured, "grade"] = [genant_grade(value) for value in largest]
        method = GENANT_METHOD
    table["morphology"] = ""
    for index in table.index[measured]:
        loss = {region: table.at[index, f"RHLV_{region}"] for region in ANATOMICAL_REGIONS}
        table.at[index, "morphology"] = suggested_morphology(loss, int(table.at[index, "grade"]))
    table["grade_method"] = np.where(measured, "svm" if grader_path is not None else "genant_thresholds", "")
    return method


def _add_measurements(table: pd.DataFrame, rhlv: pd.DataFrame) -> None:
    """Copy heights (mm) and RHLV per region from the RHLV table into the vertebra table (renamed regions)."""
    indexed = rhlv.set_index("Vertebra")
    for short, region in REGION_NAMES.items():
        for which in ("ori", "syn"):
            table[f"H_{which}_{region}_mm"] = table["Vertebra"].map(indexed[f"H_{which}_{short}_mm"])
        table[f"RHLV_{region}"] = table["Vertebra"].map(indexed[f"{short.capitalize()} RHLV"])
    table["RHLV_max_regional"] = table[["RHLV_anterior", "RHLV_middle", "RHLV_posterior"]].max(axis=1)


def pseudo_healthy_ct(ct: np.ndarray, affine: np.ndarray, dataroot: Path, fake_root: Path,
                      keys: list[str]) -> np.ndarray:
    """The scan's CT with each synthesized target's voxels replaced by the synthesized CT (float32 HU).

    The replaced region of a vertebra is its original or synthesized body in the crop, dilated by
    ``PASTE_MARGIN_VOXELS`` and kept within the original body's axial (A-P x R-L) footprint, dilated
    alike (a synthesized body may be taller, not wider); it is mapped onto the scan through the
    crop's sidecar (nearest) and filled with the synthesized crop CT interpolated linearly there.
    """
    out = np.array(ct, dtype=np.float32, copy=True)
    for key in keys:
        crop = load_crop(dataroot, key, need_ct=False)
        fake_ct = load_ct(OutputLayout(fake_root).ct(key)).array
        fake_label = load_mask(OutputLayout(fake_root).label(key)).array
        original = crop.label_map == crop.label
        footprint_2d = ndimage.binary_dilation(original.any(axis=0), iterations=PASTE_MARGIN_VOXELS)
        region = ndimage.binary_dilation(original | (fake_label == crop.label), iterations=PASTE_MARGIN_VOXELS)
        region &= footprint_2d[None]
        index = np.argwhere(region)
        footprint = scan_footprint(crop.sidecar, out.shape, affine, (index.min(axis=0), index.max(axis=0)))
        paste = sample_crop(region.astype(np.float32), footprint, order=0) > 0.5
        values = sample_crop(fake_ct, footprint, order=1)
        out[footprint.box][paste] = values[paste]
    return out


def value_maps(mask: np.ndarray, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(grades + 1 as uint8, largest regional RHLV as float32) on every measured vertebra's mask voxels; 0 elsewhere."""
    grades = np.zeros(mask.shape, dtype=np.uint8)
    rhlv = np.zeros(mask.shape, dtype=np.float32)
    for row in table[table["status"] == "ok"].itertuples():
        voxels = mask == row.verse_id
        grades[voxels] = int(row.grade) + 1
        rhlv[voxels] = float(row.RHLV_max_regional)
    return grades, rhlv


def slicer_markups(table: pd.DataFrame) -> dict[str, Any]:
    """3D Slicer markups (fiducial list) of the vertebral-body centroids, in LPS mm as Slicer stores them."""
    points = []
    for index, row in enumerate(table.itertuples(), start=1):
        x, y, z = row.centroid_ras_mm
        grade = "" if row.status != "ok" else f"grade {int(row.grade)}, RHLV {row.RHLV_max_regional:.2f}"
        points.append({"id": str(index), "label": row.name, "description": grade or f"{row.status}: {row.reason}",
                       "position": [-float(x), -float(y), float(z)],
                       "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0],
                       "selected": True, "locked": True, "visibility": True, "positionStatus": "defined"})
    return {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                       "Schema/markups-schema-v1.0.3.json#",
            "markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": True,
                         "labelFormat": "%N-%d", "controlPoints": points}]}


def _json_value(value: Any) -> Any:
    """A table cell as plain JSON: NumPy scalars to Python numbers, NaN and missing values to null."""
    if isinstance(value, (list, str)):
        return value
    if value is None or pd.isna(value):
        return None
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    return value


def _write_table(table: pd.DataFrame, out: Path, method: str, notes: list[str]) -> dict[str, Path]:
    csv_path, json_path = out / "vertebrae.csv", out / "vertebrae.json"
    flat = table.copy()
    flat["centroid_ras_mm"] = [" ".join(f"{x:.2f}" for x in value) for value in flat["centroid_ras_mm"]]
    with atomic_path(csv_path) as temporary:
        flat.to_csv(temporary, index=False, float_format="%.4f")
    records = [{key: _json_value(value) for key, value in row.items()} for row in table.to_dict(orient="records")]
    write_json(json_path, {"grade_method": method, "notes": notes, "vertebrae": records})
    return {"vertebrae.csv": csv_path, "vertebrae.json": json_path}


def predict_scan(settings: PredictSettings) -> PredictResult:
    """Run the whole chain on one scan and write the outputs of ``OUTPUT_FILES`` into ``settings.out``.

    Raises :class:`PredictError`, ``ImageIOError``, ``StraightenError``, ``FileNotFoundError`` or
    ``GradingError`` (each naming the file) for bad input; no output file is written then.
    """
    if settings.reference not in REFERENCES:
        raise PredictError(f"--reference {settings.reference!r}: expected one of {REFERENCES}")
    check_same_grid(read_grid(settings.ct), read_grid(settings.mask))
    checkpoint = checkpoint_file(settings.checkpoints_dir, settings.name, settings.epoch)
    model = load_generator(checkpoint, "cpu", settings.plane)
    plane = settings.plane or model.options.get("plane", "sagittal")
    crop_size, spacing = model_geometry(checkpoint, model.options, settings)
    del model
    if settings.grader is not None:
        load_grader(settings.grader)  # fail before the long steps
    notes: list[str] = []
    if settings.classifier:
        note = check_classifier_geometry(settings, crop_size, spacing)
        notes += [note] if note else []
    case = settings.case or case_name(Path(settings.ct))
    settings.out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:  # a failed run must not leave an earlier run's results looking like its own
        (settings.out / name).unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".predict-work-", dir=settings.out))
    if settings.keep_work:
        notes.append(f"intermediate files kept in {work}")
    try:
        mask_path = verse_mask_file(settings, work, case)
        records, centroid_notes = case_centroids(mask_path)
        notes += centroid_notes
        if not records:
            known_ids = "TotalSegmentator ids 27-50" if settings.label_scheme == "totalseg" else "VerSe ids 1-25, 28"
            raise PredictError(f"{settings.mask}: no vertebra label in the mask ({known_ids})")
        rows = _status_rows(records, case)
        dataroot = work / "straightened"
        straightened = straighten_case(CaseFiles(case, mask_path.parent, Path(settings.ct), mask_path), dataroot,
                                       crop_size, spacing)
        notes += straightened.notes
        for key, why in straightened.skipped.items():
            if rows[key]["status"] == "ok":
                rows[key]["status"] = "skipped"
            rows[key]["reason"] = why
        cam_dir = None
        if settings.classifier:
            cam_dir = work / "heatmap"
            for key, why in _attention_maps(settings, dataroot, cam_dir).items():
                notes.append(f"{key}: no attention map ({why}); zeros used")
        results = work / "results"
        for key, why in _synthesize(settings, dataroot, cam_dir, results, plane).items():
            rows[key]["status"], rows[key]["reason"] = "synthesis_failed", _without_work_paths(why, key, work)
        fake_root = results / settings.name
        tables = rhlv_tables(dataroot / "label", OutputLayout(fake_root).label_dir, None, (settings.reference,),
                             MeasureOptions(plane=plane), MapSettings(work / "maps"), progress=False)
        for failure in tables.failures[settings.reference]:
            key = failure.split(" ", 1)[0]
            if key in rows and rows[key]["status"] == "ok":
                rows[key]["status"], rows[key]["reason"] = "not_measured", _without_work_paths(failure, key, work)
        rhlv = tables.tables[settings.reference]
        table = pd.DataFrame(list(rows.values()))
        table.loc[(table["status"] == "ok") & ~table["Vertebra"].isin(rhlv["Vertebra"]), "status"] = "not_measured"
        _add_measurements(table, rhlv)
        table["grade"] = np.nan
        method = _grade(table, rhlv, settings.grader)
        table["grade"] = table["grade"].astype("Int64")
        table["reference"] = np.where(table["status"] == "ok", settings.reference, "")
        if not (table["status"] == "ok").any():
            raise PredictError(f"{settings.mask}: no vertebra could be measured: "
                               + "; ".join(f"{r.name} {r.status} ({r.reason})" for r in table.itertuples()))
        synthesized = [key for key in straightened.written if OutputLayout(fake_root).ct(key).is_file()]
        staged = _write_outputs(work / "outputs", settings, table, method, notes, mask_path, dataroot, fake_root,
                                synthesized, work / "maps")
        files = {name: path.replace(settings.out / name) for name, path in staged.items()}
    finally:
        if not settings.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return PredictResult(table, files, notes, method)


def _write_outputs(out: Path, settings: PredictSettings, table: pd.DataFrame, method: str, notes: list[str],
                   mask_path: Path, dataroot: Path, fake_root: Path, synthesized: list[str],
                   maps: Path) -> dict[str, Path]:
    """Write every output file into the staging folder ``out`` (moved into place once all exist)."""
    ct = load_ct(settings.ct)
    mask = load_mask(mask_path).array
    pseudo = pseudo_healthy_ct(ct.array, ct.affine, dataroot, fake_root, synthesized)
    hu = np.clip(np.rint(pseudo), np.iinfo(np.int16).min, np.iinfo(np.int16).max).astype(np.int16)
    grades, rhlv = value_maps(mask, table)
    files = _write_table(table, out, method, notes)
    files["pseudo_healthy_ct.nii.gz"] = save_nifti(hu, ct.affine, out / "pseudo_healthy_ct.nii.gz")
    files["grades.nii.gz"] = save_nifti(grades, ct.affine, out / "grades.nii.gz")
    files["rhlv.nii.gz"] = save_nifti(rhlv, ct.affine, out / "rhlv.nii.gz", dtype=np.float32)
    write_json(out / "centroids.mrk.json", slicer_markups(table))
    files["centroids.mrk.json"] = out / "centroids.mrk.json"
    if settings.report:
        from pipeline.report import write_report

        files["report.html"] = write_report(out / "report.html", settings, table, method, notes, ct, pseudo,
                                            grades, dataroot, fake_root, maps)
    return files
