"""predict.py on an oblique, anisotropic phantom (NIfTI and DICOM CT), its outputs on the scan grid and bad input.

What the end-to-end test proves: the whole chain (centroids, straightening with the model's crop
geometry, iterative synthesis, RHLV, grading, mapping back) runs on a scan in an arbitrary
orientation and spacing and its NIfTI outputs overlay the scan. The generator is untrained (a
trained one is beyond a unit test's budget), so the heights are measured against the nearest
healthy neighbours (``--reference neighbours``), which needs no synthesis quality; the test does not
show that synthesized heights are right (the phantom accuracy benchmark does).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

import predict
from data.image_io import check_same_grid, load_ct, read_grid, save_nifti
from data.labels import TOTALSEG_TO_VERSE, totalseg_to_verse
from models.networks import HealthiVertGenerator
from pipeline.predict import PredictSettings, verse_mask_file
from tests.phantom_fixtures import make_test_phantom
from util.checkpoint import Progress, save_checkpoint

CROP_SIZE = [96, 96, 48]
FRACTURED = 21


class _UntrainedModel:
    """Just enough of a training model for ``save_checkpoint``: an untrained generator's weights."""

    def __init__(self, ngf: int) -> None:
        self.generator = HealthiVertGenerator(ngf, 40.0)

    def state_dict(self) -> dict:
        return {"nets": {"G": self.generator.state_dict()}}


def write_checkpoint(folder: Path, name: str, plane: str = "sagittal", spacing_mm: float = 1.0,
                     crop_size: list[int] = CROP_SIZE) -> Path:
    options = {"plane": plane, "ngf": 4, "mask_height": 40.0, "crop_size": crop_size,
               "crop_spacing_mm": [spacing_mm] * 3}
    return save_checkpoint(folder / name / "latest.pth", _UntrainedModel(4), Progress(1, 0, 0, True), options)


def write_dicom_series(ct_path: Path, folder: Path) -> Path:
    """Write a NIfTI CT as an int16 DICOM series (one file per slice of the last array axis) with SimpleITK."""
    import SimpleITK as sitk

    image = nib.load(str(ct_path))
    array = np.rint(np.asanyarray(image.dataobj)).astype(np.int16)
    affine = image.affine
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    lps = np.diag([-1.0, -1.0, 1.0])
    volume = sitk.GetImageFromArray(np.transpose(array, (2, 1, 0)))
    volume.SetSpacing(spacing.tolist())
    volume.SetOrigin((lps @ affine[:3, 3]).tolist())
    volume.SetDirection((lps @ (affine[:3, :3] / spacing)).ravel().tolist())
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = volume.GetDirection()
    orientation = "\\".join(f"{v:.10f}" for v in (direction[0], direction[3], direction[6],
                                                    direction[1], direction[4], direction[7]))
    for k in range(volume.GetDepth()):
        slice_image = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in (("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.2"), ("0020|0013", str(k + 1)),
                           ("0020|0032", "\\".join(f"{p:.6f}" for p in position)), ("0020|0037", orientation),
                           ("0018|0050", f"{spacing[2]:.6f}"), ("0028|1052", "0"), ("0028|1053", "1")):
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:04d}.dcm"))
        writer.Execute(slice_image)
    return folder


@pytest.fixture(scope="module")
def oblique_case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Phantom T12-L4 in PIR orientation at 0.8 x 1.6 x 1.1 mm, L2 crushed by 45 %; CT also as DICOM; a tiny model."""
    root = tmp_path_factory.mktemp("predict")
    phantom = make_test_phantom(root, case="obl", labels=(19, 20, 21, 22, 23), fractures={FRACTURED: ("crush", 0.45)},
                                orientation="PIR", spacing_mm=(0.8, 1.6, 1.1), seed=3)
    raw = root / "raw" / "obl"
    write_checkpoint(root / "checkpoints", "tiny")
    return {"root": root, "ct": raw / "obl.nii.gz", "mask": raw / "obl_msk.nii.gz", "phantom": phantom,
            "checkpoints": root / "checkpoints", "dicom": write_dicom_series(raw / "obl.nii.gz", root / "dicom")}


def run_predict(case: dict, out: Path, *extra: str, ct: Path | None = None, mask: Path | None = None) -> int:
    return predict.main(["--ct", str(ct or case["ct"]), "--mask", str(mask or case["mask"]), "--name", "tiny",
                         "--checkpoints_dir", str(case["checkpoints"]), "--out", str(out), *extra])


def test_dicom_series_reads_onto_the_nifti_grid(oblique_case: dict) -> None:
    dicom = load_ct(oblique_case["dicom"])
    nifti = load_ct(oblique_case["ct"])
    # right-handed: a DICOM series cannot hold a left-handed grid
    assert dicom.orientation == nifti.orientation == "PIR"
    assert np.abs(dicom.affine - nifti.affine).max() < 1e-4
    assert np.array_equal(dicom.array, np.rint(nifti.array))
    check_same_grid(read_grid(oblique_case["dicom"]), read_grid(oblique_case["mask"]))


@pytest.mark.slow
def test_predict_from_dicom_grades_the_fractured_vertebra_on_the_scan_grid(oblique_case: dict, tmp_path: Path,
                                                                           capsys) -> None:
    out = tmp_path / "out"
    assert run_predict(oblique_case, out, "--reference", "neighbours", "--case", "obl",
                       ct=oblique_case["dicom"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(predict_outputs())
    table = pd.read_csv(out / "vertebrae.csv")
    measured = table[table["status"] == "ok"]
    # the neighbour baseline needs a complete healthy neighbour in the 96 mm crop: T12 (the first) has none,
    # L3 and L4 have theirs cut by the crop's lower face; those are listed with the reason, not dropped
    assert {20, FRACTURED} <= set(measured["verse_id"]) and len(table) == 5
    assert set(table.loc[table["status"] != "ok", "reason"].str.contains("neighbour")) == {True}
    worst = measured.loc[measured["RHLV_max_regional"].idxmax()]
    assert worst["verse_id"] == FRACTURED and worst["grade"] >= 2
    assert (measured.loc[measured["verse_id"] != FRACTURED, "grade"] == 0).all()
    assert "Genant thresholds" in json.loads((out / "vertebrae.json").read_text(encoding="utf-8"))["grade_method"]

    ct = nib.load(str(oblique_case["ct"]))
    phantom_mask = np.asanyarray(nib.load(str(oblique_case["mask"])).dataobj)
    grades = nib.load(str(out / "grades.nii.gz"))
    rhlv = nib.load(str(out / "rhlv.nii.gz"))
    pseudo = nib.load(str(out / "pseudo_healthy_ct.nii.gz"))
    for image in (grades, rhlv, pseudo):
        assert image.shape == ct.shape and np.abs(image.affine - ct.affine).max() < 1e-4
    # the fractured vertebra's voxels in grades.nii.gz: the component of its value at the phantom's L2 centroid
    grade_map = np.asanyarray(grades.dataobj)
    centroid = np.rint(np.argwhere(phantom_mask == FRACTURED).mean(axis=0)).astype(int)
    components, _ = ndimage.label(grade_map == int(worst["grade"]) + 1)
    overlay = components == components[tuple(centroid)]
    truth = phantom_mask == FRACTURED
    dice = 2 * np.count_nonzero(overlay & truth) / (np.count_nonzero(overlay) + np.count_nonzero(truth))
    assert dice > 0.9
    assert np.allclose(np.asanyarray(rhlv.dataobj)[truth], worst["RHLV_max_regional"], atol=1e-4)
    # the pseudo-healthy CT differs from the scan only near the synthesized vertebral bodies: within their axial
    # footprint, and in height within the generator's band (40 mm, centred on the body)
    changed = np.rint(np.asanyarray(pseudo.dataobj)) != np.rint(np.asanyarray(ct.dataobj))
    spacing = np.linalg.norm(ct.affine[:3, :3], axis=0)
    distance_mm = ndimage.distance_transform_edt(phantom_mask == 0, sampling=spacing)
    assert changed.any() and distance_mm[changed].max() < 15.0
    # Slicer markups: LPS positions of the body centroids
    markups = json.loads((out / "centroids.mrk.json").read_text(encoding="utf-8"))["markups"][0]
    assert markups["coordinateSystem"] == "LPS" and markups["type"] == "Fiducial"
    points = {p["label"]: np.array(p["position"]) for p in markups["controlPoints"]}
    truth_l2 = next(v for v in oblique_case["phantom"].truth["vertebrae"] if v["label"] == FRACTURED)
    assert np.linalg.norm(points["L2"] - np.array(truth_l2["centroid_ras_mm"]) * [-1, -1, 1]) < 2.0
    report = (out / "report.html").read_text(encoding="utf-8")
    assert report.count("data:image/png;base64,") >= 1 + 2 * len(measured) and "Genant thresholds" in report


def predict_outputs() -> tuple[str, ...]:
    from pipeline.predict import OUTPUT_FILES

    return OUTPUT_FILES


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_mask_from_another_scan_is_refused(oblique_case: dict, tmp_path: Path, capsys) -> None:
    mask = nib.load(str(oblique_case["mask"]))
    other = tmp_path / "other_msk.nii.gz"
    save_nifti(np.asanyarray(mask.dataobj)[:-3], mask.affine, other)
    assert run_predict(oblique_case, tmp_path / "out", mask=other) == 1
    line = _one_error_line(capsys)
    assert str(other) in line and str(oblique_case["ct"]) in line and "shapes differ" in line
    assert not (tmp_path / "out").exists()


def test_mask_without_vertebrae_is_refused(oblique_case: dict, tmp_path: Path, capsys) -> None:
    mask = nib.load(str(oblique_case["mask"]))
    empty = tmp_path / "empty_msk.nii.gz"
    save_nifti(np.zeros(mask.shape, dtype=np.uint8), mask.affine, empty)
    assert run_predict(oblique_case, tmp_path / "out", mask=empty) == 1
    line = _one_error_line(capsys)
    assert str(empty) in line and "no vertebra" in line
    assert not any(p.name in predict_outputs() for p in (tmp_path / "out").iterdir())


@pytest.mark.parametrize("what, checkpoint, flags, message", [
    ("spacing", {"spacing_mm": 2.0}, ["--spacing", "1.0"], "trained on 2 mm crops"),
    ("crop size", {"crop_size": [64, 64, 32]}, ["--crop_size", "96", "96", "48"], "trained on [64, 64, 32] crops"),
    ("plane", {"plane": "coronal"}, ["--plane", "sagittal"], "trained on coronal slices"),
])
def test_model_of_another_geometry_is_refused(oblique_case: dict, tmp_path: Path, capsys, what: str,
                                              checkpoint: dict, flags: list[str], message: str) -> None:
    path = write_checkpoint(tmp_path / "checkpoints", "other", **checkpoint)
    code = predict.main(["--ct", str(oblique_case["ct"]), "--mask", str(oblique_case["mask"]), "--name", "other",
                         "--checkpoints_dir", str(tmp_path / "checkpoints"), "--out", str(tmp_path / "out"), *flags])
    assert code == 1
    line = _one_error_line(capsys)
    assert str(path) in line and message in line, what


def test_totalsegmentator_ids_map_to_verse_ids(oblique_case: dict, tmp_path: Path) -> None:
    assert TOTALSEG_TO_VERSE[27] == 24 and TOTALSEG_TO_VERSE[31] == 20  # L5, L1
    assert TOTALSEG_TO_VERSE[32] == 19 and TOTALSEG_TO_VERSE[43] == 8  # T12, T1
    assert TOTALSEG_TO_VERSE[44] == 7 and TOTALSEG_TO_VERSE[50] == 1  # C7, C1
    totalseg = np.array([0, 5, 25, 26, 27, 31, 32, 43, 44, 50, 51, 117])  # liver, sacrum, S1, ..., heart, cartilage
    assert totalseg_to_verse(totalseg).tolist() == [0, 0, 0, 0, 24, 20, 19, 8, 7, 1, 0, 0]
    body = np.array([0, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1])  # vertebrae_body: 1 body, 2 disc
    assert totalseg_to_verse(totalseg, body).tolist() == [0, 0, 0, 0, 24, 0, 19, 8, 7, 1, 0, 0]
    # a phantom mask relabelled with TotalSegmentator ids (plus a liver) comes back as the VerSe mask
    mask = nib.load(str(oblique_case["mask"]))
    verse = np.asanyarray(mask.dataobj).astype(np.int16)
    ids = np.where(verse > 0, 51 - verse, 0)
    ids[:5, :5, :5] = 5
    totalseg_path = save_nifti(ids.astype(np.uint8), mask.affine, tmp_path / "total.nii.gz")
    settings = PredictSettings(ct=oblique_case["ct"], mask=totalseg_path, name="tiny", out=tmp_path,
                               label_scheme="totalseg")
    converted = nib.load(str(verse_mask_file(settings, tmp_path / "work", "obl")))
    assert np.array_equal(np.asanyarray(converted.dataobj), verse) and np.allclose(converted.affine, mask.affine)


def test_segment_without_totalsegmentator_says_how_to_get_a_mask(oblique_case: dict, tmp_path: Path, capsys) -> None:
    try:
        import totalsegmentator  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TotalSegmentator is installed; this test covers its absence")
    code = predict.main(["--ct", str(oblique_case["ct"]), "--segment", "--name", "tiny",
                         "--checkpoints_dir", str(oblique_case["checkpoints"]), "--out", str(tmp_path / "out")])
    assert code == 1
    line = _one_error_line(capsys)
    assert "TotalSegmentator" in line and "--label_scheme totalseg" in line


@pytest.mark.slow
def test_segment_with_totalsegmentator_gives_a_vertebra_mask(oblique_case: dict, tmp_path: Path) -> None:
    pytest.importorskip("totalsegmentator")
    from pipeline.segment import segment_vertebrae

    mask = nib.load(str(segment_vertebrae(oblique_case["ct"], tmp_path / "seg.nii.gz")))
    assert np.isin(np.unique(np.asanyarray(mask.dataobj)), [0, *TOTALSEG_TO_VERSE, 26]).all()


def test_straightening_scripts_read_totalsegmentator_masks(oblique_case: dict, tmp_path: Path) -> None:
    from straighten import location_json_local, straighten_mask_3d

    mask = nib.load(str(oblique_case["mask"]))
    verse = np.asanyarray(mask.dataobj).astype(np.int16)
    folder = tmp_path / "raw" / "ts"
    folder.mkdir(parents=True)
    (folder / "ts.nii.gz").write_bytes(oblique_case["ct"].read_bytes())
    save_nifti(np.where(verse > 0, 51 - verse, 0).astype(np.uint8), mask.affine, folder / "ts_msk.nii.gz")
    assert location_json_local.main(["--root", str(tmp_path), "--label_scheme", "totalseg", "--quiet"]) == 0
    records = json.loads((folder / "ts.json").read_text(encoding="utf-8"))
    assert [r["label"] for r in records] == [19, 20, 21, 22, 23]
    assert straighten_mask_3d.main(["--root", str(tmp_path), "--label_scheme", "totalseg", "--crop_size", "96", "96",
                                    "48", "--quiet"]) == 0
    crop = np.asanyarray(nib.load(str(tmp_path / "straightened" / "label" / "ts_21.nii.gz")).dataobj)
    assert set(np.unique(crop)) <= {0, 19, 20, 21, 22, 23} and (crop == 21).sum() > 1000


def test_grades_come_from_the_saved_grader_or_genant_thresholds(tmp_path: Path) -> None:
    from evaluation.grader import fit_grader, save_grader
    from evaluation.grading import feature_table, prepare_grading_data
    from pipeline.predict import _add_measurements, _grade
    from tests.evaluation.test_grading import rhlv_table

    cohort = rhlv_table({0: 30, 1: 20, 2: 20, 3: 15}, {0: 10, 1: 8, 2: 8, 3: 6})
    grader_path = save_grader(fit_grader(prepare_grading_data(*feature_table(cohort))), tmp_path / "grader.skops")
    rhlv = cohort.head(6).drop(columns=["Label", "Dataset"]).assign(
        **{f"H_{w}_{r}_mm": 20.0 for w in ("syn", "ori") for r in ("all", "pre", "mid", "post")})
    table = pd.DataFrame({"Vertebra": list(rhlv["Vertebra"]) + ["x_1"], "status": ["ok"] * 6 + ["cut_by_border"]})
    _add_measurements(table, rhlv)
    with_grader = table.copy()
    assert "SVM grader" in _grade(with_grader, rhlv, grader_path)
    assert with_grader["grade"].iloc[:6].tolist() == cohort.head(6)["Label"].tolist()  # separable table
    assert {f"score_grade_{g}" for g in range(4)} <= set(with_grader.columns)
    assert np.isnan(with_grader["grade"].iloc[6])
    thresholds = table.copy()
    assert "Genant thresholds" in _grade(thresholds, rhlv, None)
    largest = rhlv[["Pre RHLV", "Mid RHLV", "Post RHLV"]].max(axis=1).to_numpy()
    expected = np.select([largest < 0.2, largest < 0.25, largest <= 0.4], [0, 1, 2], 3)
    assert thresholds["grade"].iloc[:6].tolist() == expected.tolist()
