"""pipeline/run.py: the demo run's output layout follows its run name, step outcomes, the presets."""

from __future__ import annotations

from pathlib import Path

from pipeline.run import FULL, GAN_NAME, QUICK, DemoPaths, PipelineRun, StepResult


def test_the_run_name_places_checkpoints_results_and_their_evaluations(tmp_path: Path) -> None:
    default, renamed = DemoPaths(tmp_path), DemoPaths(tmp_path, name="other")
    assert default.name == GAN_NAME == "healthivert"
    assert default.results == tmp_path / "results" / "healthivert"
    assert default.loss_log == tmp_path / "checkpoints" / "healthivert" / "loss_log.csv"
    assert renamed.results == tmp_path / "results" / "other"
    assert renamed.loss_log == tmp_path / "checkpoints" / "other" / "loss_log.csv"
    assert renamed.rhlv == tmp_path / "results" / "other" / "rhlv.csv"
    for folder in (renamed.maps, renamed.grading, renamed.grading_neighbours, renamed.generation_summary):
        assert folder.parent == renamed.results
    # the run-independent artefacts stay where the step scripts' defaults put them
    assert (renamed.raw, renamed.split_json, renamed.dataroot, renamed.heatmap) == (
        tmp_path / "raw", tmp_path / "vertebra_data.json", tmp_path / "straightened", tmp_path / "heatmap")
    assert renamed.report == tmp_path / "report" / "index.html"


def test_the_two_methods_read_their_own_table_and_grading_folder(tmp_path: Path) -> None:
    paths = DemoPaths(tmp_path)
    methods = {m.method: (m.rhlv, m.grading) for m in paths.methods}
    assert methods == {"HealthiVert-GAN": (paths.rhlv, paths.grading),
                       "neighbour baseline": (paths.rhlv_neighbours, paths.grading_neighbours)}


def test_step_status_from_exit_code_and_outputs() -> None:
    def status(returncode: int | None, present: int, expected: int = 2) -> str:
        return StepResult("s", "python s.py", "x", returncode, present, expected).status

    assert status(None, 0) == "skipped"
    assert status(0, 2) == "ok"
    assert status(0, 1) == "partial"  # exit 0 but an output is missing
    assert status(1, 2) == "partial"  # a batch with failed items that wrote its outputs
    assert status(1, 0) == "failed"


def test_a_run_is_ok_unless_a_step_failed_or_was_skipped(tmp_path: Path) -> None:
    def step(returncode: int | None, present: int, wall: float) -> StepResult:
        return StepResult("s", "python s.py", "x", returncode, present, 1, wall)

    run = PipelineRun(QUICK, DemoPaths(tmp_path), "-1", [step(0, 1, 1.5), step(1, 1, 2.0)])
    assert run.ok and run.total_wall_s == 3.5
    run.steps.append(step(None, 0, 0.0))
    assert not run.ok


def test_generation_slice_threshold_scales_with_the_voxel_area() -> None:
    assert FULL.spacing_mm == 2.0 and FULL.generation_min_slice_voxels == 100  # 400 voxels of 1 mm²
    assert QUICK.cases < FULL.cases and QUICK.gan_epochs < FULL.gan_epochs
