"""data.phantoms.truth: the truth file's vertebra entries agree with the heights, the Genant rule and the grid."""

from __future__ import annotations

import numpy as np
import pytest

from data.image_io import voxel_to_world
from data.phantoms.case import generate_case
from data.phantoms.spec import CaseSpec, Fracture
from data.phantoms.truth import HEIGHT_DEFINITION
from evaluation.genant import ANATOMICAL_REGIONS, GENANT_RULE, genant_grade

SPACING_MM = (1.5, 1.2, 2.0)  # per output axis of LPS: L->R 1.5, A->P 1.2, S->I 2.0 (so RAS spacing is the same)


@pytest.fixture(scope="module")
def truth() -> dict:
    """Truth of T11-L2: T12 wedge 30 % (grade 2), L1 a mild 10 % deformity (grade 0), L2 healthy."""
    spec = CaseSpec("phtruth", 5, labels=(18, 19, 20, 21), orientation="LPS", spacing_mm=SPACING_MM, noise_hu=10.0,
                    fractures={19: Fracture("wedge", 0.30), 20: Fracture("biconcave", 0.10)}, margin_mm=6.0)
    return generate_case(spec).truth


def test_losses_grade_and_morphology_follow_the_heights(truth: dict) -> None:
    by_label = {v["label"]: v for v in truth["vertebrae"]}
    assert [v["name"] for v in truth["vertebrae"]] == ["T11", "T12", "L1", "L2"]
    for v in truth["vertebrae"]:
        assert tuple(v["loss_by_region"]) == ANATOMICAL_REGIONS
        for region in ANATOMICAL_REGIONS:
            loss = 1.0 - v["height_post_mm"][region] / v["height_pre_mm"][region]
            assert v["loss_by_region"][region] == pytest.approx(loss, abs=1e-4)
        assert v["loss_ratio"] == pytest.approx(max(v["loss_by_region"].values()), abs=1e-9)
        assert v["grade"] == genant_grade(v["loss_ratio"])
    assert by_label[19]["loss_ratio"] == pytest.approx(0.30, abs=1e-5) and by_label[19]["grade"] == 2
    assert by_label[19]["morphology"] == "wedge" and by_label[19]["loss_by_region"]["posterior"] == pytest.approx(0.0)
    assert by_label[20]["grade"] == 0 and by_label[20]["morphology"] == "biconcave"
    assert by_label[21]["loss_ratio"] == 0.0 and by_label[21]["morphology"] == "none"


def test_only_neighbours_of_graded_fractures_are_adjacent(truth: dict) -> None:
    adjacent = {v["label"]: v["adjacent_fracture"] for v in truth["vertebrae"]}
    assert adjacent == {18: True, 19: False, 20: True, 21: False}  # L1's grade-0 deformity does not count


def test_height_points_lie_on_the_frame_at_the_third_centres(truth: dict) -> None:
    for v in truth["vertebrae"]:
        points = {r: np.array(v["height_points_ras_mm"][r]) for r in ANATOMICAL_REGIONS}
        origin, anterior = np.array(v["frame"]["origin_ras_mm"]), np.array(v["frame"]["anterior"])
        third = v["body_depth_mm"] / 3.0
        assert np.allclose(points["middle"], origin, atol=1e-3)
        assert np.allclose(points["anterior"] - origin, third * anterior, atol=2e-3)
        assert np.allclose(points["posterior"] - origin, -third * anterior, atol=2e-3)
        superior = np.array(v["frame"]["superior"])
        assert float(superior @ anterior) == pytest.approx(0.0, abs=1e-5)
        assert superior[2] > 0.9  # cranial


def test_height_resolution_is_the_voxel_extent_along_the_spine(truth: dict) -> None:
    ras_spacing = np.array(SPACING_MM)  # LPS flips axes but keeps their order
    for v in truth["vertebrae"]:
        expected = float(np.abs(np.array(v["frame"]["superior"])) @ ras_spacing)
        assert v["height_resolution_mm"] == pytest.approx(expected, abs=1e-3)
        assert 1.9 < v["height_resolution_mm"] < 2.6


def test_centroids_in_voxels_and_mm_agree_through_the_affine(truth: dict) -> None:
    affine = np.array(truth["affine"])
    assert np.allclose(np.abs(np.diag(affine)[:3]), SPACING_MM) and affine[0, 0] < 0 and affine[1, 1] < 0
    for v in truth["vertebrae"]:
        for voxel_key, world_key in (("centroid_voxel", "centroid_ras_mm"),
                                     ("vertebra_centroid_voxel", "vertebra_centroid_ras_mm")):
            world = voxel_to_world(affine, np.array([v[voxel_key]]))[0]
            assert np.allclose(world, v[world_key], atol=0.01)
        assert v["vertebra_voxels"] > v["body_voxels"] > 0  # the label holds the posterior elements too


def test_case_keys_and_height_definition(truth: dict) -> None:
    assert truth["height_definition"] == HEIGHT_DEFINITION
    assert HEIGHT_DEFINITION.endswith(f"grade by Genant: {GENANT_RULE}.")
    assert truth["orientation"] == "LPS" and truth["spacing_mm"] == list(SPACING_MM) and truth["noise_hu"] == 10.0
    line = np.array(truth["centreline_ras_mm"])
    assert np.all(np.diff(line[:, 2]) < 0)  # cranial to caudal
    assert np.median(np.linalg.norm(np.diff(line, axis=0), axis=1)) == pytest.approx(2.0, abs=0.05)  # every 2 mm
