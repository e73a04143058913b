"""The phantom cohort generator (docs/design.md, 'Phantom cohort'): anatomy, truth heights, grades, determinism, I/O
round trips."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from data.crops import read_split
from data.image_io import find_case_files, load_ct_and_mask, reorient, world_to_voxel
from data.labels import parse_key
from data.phantoms.case import generate_case, write_case
from data.phantoms.cohort import make_split, plan_cohort
from data.phantoms.spec import CaseSpec, Fracture, parse_vertebra_range
from evaluation.genant import GENANT_THRESHOLDS, genant_grade
from tests.phantom_fixtures import make_test_phantom

REGION_FRACTIONS = {"posterior": 1.0 / 6.0, "middle": 0.5, "anterior": 5.0 / 6.0}
STEP_MM = 0.05


# --------------------------------------------------------------------------- independent measurement


def _labels_along(mask: np.ndarray, affine: np.ndarray, points_ras: np.ndarray) -> np.ndarray:
    """Mask values at RAS points (nearest voxel; outside the volume = 0)."""
    index = np.rint(world_to_voxel(affine, points_ras)).astype(int)
    inside = np.all((index >= 0) & (index < np.array(mask.shape)), axis=1)
    values = np.zeros(len(points_ras), dtype=mask.dtype)
    values[inside] = mask[tuple(index[inside].T)]
    return values


def _run_length_mm(mask: np.ndarray, affine: np.ndarray, start: np.ndarray, direction: np.ndarray, label: int,
                   reach_mm: float = 60.0) -> tuple[float, float]:
    """Extent (mm, negative and positive side) of the run of ``label`` through ``start`` along ``direction``."""
    offsets = np.arange(-reach_mm, reach_mm + STEP_MM / 2, STEP_MM)
    hits = _labels_along(mask, affine, start + offsets[:, None] * direction) == label
    centre = len(offsets) // 2
    if not hits[centre]:
        return 0.0, 0.0
    below = np.flatnonzero(~hits[:centre])
    above = np.flatnonzero(~hits[centre:])
    first = below[-1] + 1 if below.size else 0
    last = centre + above[0] - 1 if above.size else len(offsets) - 1
    return offsets[first] - STEP_MM / 2, offsets[last] + STEP_MM / 2


def measure_body_heights(mask: np.ndarray, affine: np.ndarray, vertebra: dict) -> dict[str, float]:
    """Body heights (mm) measured from the mask alone, given the body centroid and the local axes.

    On the mid-sagittal plane through the centroid, the body's antero-posterior extent is
    found along the anterior axis; at the centre of each third the height is the length of
    the run of the vertebra's label along the superior axis, averaged over a 1.6 mm patch.
    """
    superior = np.asarray(vertebra["frame"]["superior"])
    anterior = np.asarray(vertebra["frame"]["anterior"])
    left = np.cross(superior, anterior)
    centroid = np.asarray(vertebra["centroid_ras_mm"])
    back, front = _run_length_mm(mask, affine, centroid, anterior, vertebra["label"])
    heights = {}
    for region, fraction in REGION_FRACTIONS.items():
        centre = centroid + (back + fraction * (front - back)) * anterior
        runs = []
        for da in np.linspace(-0.8, 0.8, 5):
            for dl in np.linspace(-0.8, 0.8, 5):
                start = centre + da * anterior + dl * left
                low, high = _run_length_mm(mask, affine, start, superior, vertebra["label"])
                runs.append(high - low)
        heights[region] = float(np.mean(runs))
    return heights


# --------------------------------------------------------------------------- tests


HEIGHT_CASES = [
    ("RAS", (0.8, 0.8, 0.8), {20: ("wedge", 0.45)}),
    ("LPS", (0.7, 0.9, 1.0), {21: ("biconcave", 0.3)}),
    ("PIR", (0.8, 0.8, 2.0), {20: ("crush", 0.22)}),
    ("ASL", (1.0, 0.75, 0.9), {20: ("wedge", 0.23), 21: ("crush", 0.5)}),
]


@pytest.mark.parametrize("orientation,spacing,fractures", HEIGHT_CASES)
def test_mask_heights_match_truth(tmp_path: Path, orientation, spacing, fractures) -> None:
    """Heights measured in the written mask agree with the truth file within 1 mm (healthy and fractured)."""
    phantom = make_test_phantom(tmp_path, labels=(19, 20, 21, 22), fractures=fractures, orientation=orientation,
                                spacing_mm=spacing, seed=3)
    files = find_case_files(tmp_path / "raw" / "phtest")
    ct, mask = load_ct_and_mask(files.ct, files.mask)
    truth = json.loads((files.folder / "phtest_truth.json").read_text(encoding="utf-8"))
    assert mask.orientation == orientation
    np.testing.assert_allclose(mask.spacing_mm, spacing, atol=1e-5)
    assert truth["orientation"] == orientation and truth["spacing_mm"] == list(spacing)
    for vertebra in truth["vertebrae"]:
        measured = measure_body_heights(mask.array, mask.affine, vertebra)
        for region, height in measured.items():
            assert height == pytest.approx(vertebra["height_post_mm"][region], abs=1.0), (vertebra["name"], region)
        fractured = vertebra["label"] in fractures
        assert (vertebra["morphology"] != "none") == fractured
        if not fractured:
            assert vertebra["height_pre_mm"] == vertebra["height_post_mm"]
    assert phantom.truth["vertebrae"] == truth["vertebrae"]


def test_thick_slices_along_the_spine_limit_the_precision(tmp_path: Path) -> None:
    """With 2.5 mm axial slices the mask heights still agree within the documented resolution."""
    make_test_phantom(tmp_path, labels=(20, 21, 22), fractures={21: ("wedge", 0.35)}, orientation="LPS",
                      spacing_mm=(0.8, 0.8, 2.5), seed=5)
    files = find_case_files(tmp_path / "raw" / "phtest")
    _, mask = load_ct_and_mask(files.ct, files.mask)
    truth = json.loads((files.folder / "phtest_truth.json").read_text(encoding="utf-8"))
    for vertebra in truth["vertebrae"]:
        assert vertebra["height_resolution_mm"] > 2.0
        measured = measure_body_heights(mask.array, mask.affine, vertebra)
        for region, height in measured.items():
            assert abs(height - vertebra["height_post_mm"][region]) <= vertebra["height_resolution_mm"]


def test_wedge_biconcave_crush_morphology() -> None:
    """Each morphology removes height where it should, with the requested loss ratio."""
    phantom = make_test_phantom(labels=(19, 20, 21, 22, 23),
                                fractures={20: ("wedge", 0.35), 21: ("biconcave", 0.35), 22: ("crush", 0.35)})
    by_label = {v["label"]: v for v in phantom.truth["vertebrae"]}
    wedge, biconcave, crush = (by_label[k]["loss_by_region"] for k in (20, 21, 22))
    assert wedge["anterior"] == pytest.approx(0.35, abs=1e-4) and wedge["posterior"] < 0.01
    assert wedge["anterior"] > wedge["middle"] > wedge["posterior"]
    assert biconcave["middle"] == pytest.approx(0.35, abs=1e-4)
    assert biconcave["middle"] > 2 * max(biconcave["anterior"], biconcave["posterior"])
    assert min(crush.values()) > 0.8 * 0.35 and max(crush.values()) == pytest.approx(0.35, abs=1e-4)
    for label in (20, 21, 22):
        assert by_label[label]["grade"] == 2 and by_label[label]["loss_ratio"] == pytest.approx(0.35, abs=1e-4)


def test_anatomy_intensities_and_labels() -> None:
    """Body cortex/core, discs, soft tissue, fat and air have their HU ranges; only vertebra labels in the mask."""
    phantom = make_test_phantom(labels=(20, 21, 22), noise_hu=0.0)
    ct, mask = phantom.ct, phantom.mask
    assert set(np.unique(mask)) == {0, 20, 21, 22}
    vertebra = phantom.truth["vertebrae"][1]
    centre = np.rint(vertebra["centroid_voxel"]).astype(int)
    core = ct[tuple(centre)]
    assert 60 <= core <= 300
    superior = np.asarray(vertebra["frame"]["superior"])
    bone = ct[mask > 0]
    assert np.percentile(bone, 99) > 600  # cortical shell
    # Disc: half-way between the body and its lower neighbour along the spine axis.
    lower = phantom.truth["vertebrae"][2]
    gap = 0.5 * (np.asarray(vertebra["centroid_ras_mm"]) + np.asarray(lower["centroid_ras_mm"]))
    gap_voxel = np.rint(world_to_voxel(phantom.affine, gap[None])[0]).astype(int)
    assert mask[tuple(gap_voxel)] == 0 and 40 <= ct[tuple(gap_voxel)] <= 130
    assert np.dot(superior, [0.0, 0.0, 1.0]) > 0.8
    assert (ct < -900).any()  # air behind the back
    soft = ct[(mask == 0) & (ct > -200) & (ct < 200)]
    assert ((soft > -130) & (soft < -70)).sum() > 1000  # fat
    assert ((soft > 20) & (soft < 70)).sum() > 1000  # muscle / soft tissue
    assert ct.dtype == np.int16 and mask.dtype == np.uint8


def test_posterior_elements_carry_the_label() -> None:
    """Pedicles, lamina and processes are labelled like the body and extend well behind it (VerSe-style masks)."""
    phantom = make_test_phantom(labels=(20, 21, 22), noise_hu=0.0)
    affine = phantom.affine
    for vertebra in phantom.truth["vertebrae"]:
        voxels = np.argwhere(phantom.mask == vertebra["label"])
        world = voxels @ affine[:3, :3].T + affine[:3, 3]
        anterior = np.asarray(vertebra["frame"]["anterior"])
        left = np.cross(vertebra["frame"]["superior"], anterior)
        along = (world - np.asarray(vertebra["frame"]["origin_ras_mm"])) @ anterior
        across = (world - np.asarray(vertebra["frame"]["origin_ras_mm"])) @ left
        depth = vertebra["body_depth_mm"]
        assert along.max() == pytest.approx(depth / 2, abs=1.0)
        assert along.min() < -depth / 2 - 40  # spinous process
        assert across.max() > vertebra["body_width_mm"] / 2 + 10 and across.min() < -vertebra["body_width_mm"] / 2 - 10
        assert vertebra["vertebra_voxels"] == len(voxels)
        assert vertebra["body_voxels"] < 0.8 * len(voxels)
        np.testing.assert_allclose(vertebra["vertebra_centroid_voxel"], voxels.mean(axis=0), atol=2e-3)


def test_frames_follow_the_centroids() -> None:
    """The truth's superior axes agree with the direction between neighbouring body centroids (< 12 degrees)."""
    phantom = make_test_phantom(labels=tuple(range(17, 25)), orientation="PIR", spacing_mm=(1.0, 1.0, 1.0), seed=11)
    vertebrae = phantom.truth["vertebrae"]
    for upper, middle, lower in zip(vertebrae, vertebrae[1:], vertebrae[2:]):
        chord = np.asarray(upper["centroid_ras_mm"]) - np.asarray(lower["centroid_ras_mm"])
        cosine = np.dot(chord / np.linalg.norm(chord), middle["frame"]["superior"])
        assert cosine > np.cos(np.radians(12.0))
    centroids = np.array([v["centroid_ras_mm"] for v in vertebrae])
    assert np.all(np.diff(centroids[:, 2]) < 0)  # cranial -> caudal
    voxel = np.array([v["centroid_voxel"] for v in vertebrae])
    back = voxel @ phantom.affine[:3, :3].T + phantom.affine[:3, 3]
    np.testing.assert_allclose(back, centroids, atol=2e-3)


@pytest.mark.parametrize(
    "loss,grade", [(0.0, 0), (0.19, 0), (0.2, 1), (0.249, 1), (0.25, 2), (0.4, 2), (0.41, 3), (0.6, 3)]
)
def test_genant_grade_thresholds(loss: float, grade: int) -> None:
    assert genant_grade(loss) == grade


def test_cohort_plan_has_every_grade_morphology_and_adjacent_fractures() -> None:
    specs = plan_cohort(6, seed=1)
    losses = [f for s in specs for f in s.fractures.values()]
    grades = {genant_grade(f.loss_ratio) for f in losses}
    assert grades == {0, 1, 2, 3}
    assert {f.morphology for f in losses if genant_grade(f.loss_ratio) > 0} == {"wedge", "biconcave", "crush"}
    for f in losses:
        assert all(abs(f.loss_ratio - t) >= 0.01 for t in GENANT_THRESHOLDS)
    n_fractured = sum(genant_grade(f.loss_ratio) > 0 for f in losses)
    total = sum(len(s.labels) for s in specs)
    assert 0.25 <= n_fractured / total <= 0.45
    def fractured(spec: CaseSpec, label: int) -> bool:
        return label in spec.fractures and genant_grade(spec.fractures[label].loss_ratio) > 0

    adjacent = [s.case for s in specs if any(fractured(s, lab) and fractured(s, lab + 1) for lab in s.labels)]
    assert "ph001" in adjacent and "ph004" in adjacent
    for spec in specs:
        assert spec.labels[0] not in spec.fractures and spec.labels[-1] not in spec.fractures


def test_cohort_files_split_and_grades(phantom_cohort_dir: Path) -> None:
    """The session cohort: files per case, truth grades from loss ratios, split with every grade in every part."""
    split = read_split(phantom_cohort_dir / "vertebra_data.json")
    keys = {key: (name, grade) for name, part in split.items() for key, grade in part.items()}
    cases = sorted(p.name for p in (phantom_cohort_dir / "raw").iterdir())
    assert cases == ["ph000", "ph001", "ph002", "ph003"]
    for case in cases:
        folder = phantom_cohort_dir / "raw" / case
        assert {p.name for p in folder.iterdir()} == {f"{case}.nii.gz", f"{case}_msk.nii.gz", f"{case}_truth.json"}
        truth = json.loads((folder / f"{case}_truth.json").read_text(encoding="utf-8"))
        assert truth["case"] == case
        for vertebra in truth["vertebrae"]:
            assert vertebra["grade"] == genant_grade(vertebra["loss_ratio"])
            post, pre = vertebra["height_post_mm"], vertebra["height_pre_mm"]
            losses = [1 - post[region] / pre[region] for region in ("anterior", "middle", "posterior")]
            assert vertebra["loss_ratio"] == pytest.approx(max(losses), abs=1e-3)
            assert keys[f"{case}_{vertebra['label']}"][1] == vertebra["grade"]
            assert not vertebra["truncated"]
    assert len(keys) == 4 * 8
    for name in ("train", "val", "test"):
        assert {grade for grade in split[name].values()} == {0, 1, 2, 3}, name
    case_of_split = {parse_key(key)[0]: name for key, (name, _) in keys.items()}
    assert len(case_of_split) == 4  # every case lies in exactly one split


def test_split_keeps_every_grade_in_train() -> None:
    truths = [
        {"case": "a", "vertebrae": [{"label": 20, "grade": 0}, {"label": 21, "grade": 3}]},
        {"case": "b", "vertebrae": [{"label": 20, "grade": 0}, {"label": 21, "grade": 1}]},
        {"case": "c", "vertebrae": [{"label": 20, "grade": 0}, {"label": 21, "grade": 2}]},
    ]
    split = make_split(truths, seed=0)
    assert set(split["train"].values()) == {0, 1, 2, 3}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_identical_files(tmp_path: Path) -> None:
    spec = plan_cohort(1, seed=5, labels=(20, 21, 22), spacing_mm=(1.2, 1.2, 2.0))[0]
    for folder in ("one", "two"):
        write_case(generate_case(spec), tmp_path / folder)
    names = sorted(p.name for p in (tmp_path / "one" / "raw" / spec.case).iterdir())
    assert len(names) == 3
    for name in names:
        first, second = (tmp_path / folder / "raw" / spec.case / name for folder in ("one", "two"))
        assert _digest(first) == _digest(second)
    other = generate_case(CaseSpec(**{**spec.__dict__, "seed": spec.seed + 1}))
    assert other.truth["vertebrae"][0]["height_pre_mm"] != generate_case(spec).truth["vertebrae"][0]["height_pre_mm"]


def test_orientations_round_trip_to_the_same_anatomy(tmp_path: Path) -> None:
    """Every orientation, written and read back through data.image_io and reoriented to RAS, is the same volume."""
    ras_spacing = {"R": 1.1, "L": 1.1, "A": 0.9, "P": 0.9, "S": 2.0, "I": 2.0}
    reference = None
    for orientation in ("RAS", "LPS", "PIR", "ASL", "IPL", "SRA", "LIP"):
        spacing = tuple(ras_spacing[c] for c in orientation)
        make_test_phantom(tmp_path / orientation, labels=(20, 21, 22), fractures={21: ("wedge", 0.3)},
                          orientation=orientation, spacing_mm=spacing, seed=9)
        files = find_case_files(tmp_path / orientation / "raw" / "phtest")
        ct, mask = load_ct_and_mask(files.ct, files.mask)
        assert ct.orientation == orientation
        ct_ras, mask_ras = reorient(ct, "RAS"), reorient(mask, "RAS")
        truth = json.loads((files.folder / "phtest_truth.json").read_text(encoding="utf-8"))
        if reference is None:
            reference = (ct_ras, mask_ras, truth)
            continue
        np.testing.assert_array_equal(ct_ras.array, reference[0].array)
        np.testing.assert_array_equal(mask_ras.array, reference[1].array)
        np.testing.assert_allclose(ct_ras.affine, reference[0].affine, atol=1e-6)
        for mine, theirs in zip(truth["vertebrae"], reference[2]["vertebrae"]):
            np.testing.assert_allclose(mine["centroid_ras_mm"], theirs["centroid_ras_mm"], atol=1e-3)
            assert mine["height_post_mm"] == theirs["height_post_mm"]
            voxel = world_to_voxel(mask.affine, np.array([mine["centroid_ras_mm"]]))[0]
            np.testing.assert_allclose(voxel, mine["centroid_voxel"], atol=2e-3)


def test_fixed_shape_field_of_view_flags_truncated_vertebrae() -> None:
    phantom = make_test_phantom(labels=(19, 20, 21, 22, 23), shape=(96, 96, 48), spacing_mm=(1.0, 1.0, 1.0))
    assert phantom.ct.shape == (96, 96, 48)
    flags = [v["truncated"] for v in phantom.truth["vertebrae"]]
    assert flags[0] and flags[-1]


def test_bad_specs_are_rejected() -> None:
    with pytest.raises(ValueError, match="orientation"):
        generate_case(CaseSpec(case="x", seed=0, orientation="RAR"))
    with pytest.raises(ValueError, match="not in the case"):
        generate_case(CaseSpec(case="x", seed=0, labels=(20, 21), fractures={23: Fracture("wedge", 0.3)}))
    with pytest.raises(ValueError, match="morphology"):
        Fracture("twisted", 0.3)
    with pytest.raises(ValueError, match="ordered"):
        generate_case(CaseSpec(case="x", seed=0, labels=(21, 20)))


def test_parse_vertebra_range() -> None:
    assert parse_vertebra_range("T10-L5") == tuple(range(17, 25))
    assert parse_vertebra_range("C1-L5") == tuple(range(1, 25))
    assert parse_vertebra_range("l1") == (20,)
    with pytest.raises(ValueError):
        parse_vertebra_range("L5-T10")


def test_split_does_not_depend_on_case_order() -> None:
    truths = [{"case": f"c{i}", "vertebrae": [{"label": 20, "grade": i % 4}, {"label": 21, "grade": 0}]}
              for i in range(8)]
    assert make_split(truths, seed=3) == make_split(truths[::-1], seed=3)


def test_make_phantoms_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command line writes cases, truth and split; bad options exit non-zero with a one-line reason."""
    from data.make_phantoms import main

    out = tmp_path / "cohort"
    argv = ["--out", str(out), "--cases", "2", "--seed", "3", "--vertebrae", "T12-L3", "--spacing", "1.5", "1.5", "1.5",
            "--no_progress"]
    assert main(argv) == 0
    split = read_split(out / "vertebra_data.json")
    assert sorted(key for part in split.values() for key in part) == sorted(
        f"ph00{i}_{label}" for i in range(2) for label in (19, 20, 21, 22)
    )
    assert main(["--out", str(tmp_path / "bad"), "--cases", "1", "--orientation", "XYZ", "--no_progress"]) == 2
    assert main(["--out", str(tmp_path / "bad"), "--vertebrae", "L5-T10", "--no_progress"]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
