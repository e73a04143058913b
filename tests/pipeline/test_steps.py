"""pipeline/steps.py: the demo's step scripts in order, each reading what an earlier step wrote."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pipeline.run import QUICK, DemoPaths, Step
from pipeline.steps import build_steps


def _flag(step: Step, flag: str) -> str:
    return step.args[step.args.index(flag) + 1]


def test_steps_cover_the_pipeline_in_order(tmp_path: Path, repo_root: Path) -> None:
    steps = build_steps(QUICK, DemoPaths(tmp_path), "-1")
    assert [s.script for s in steps] == [
        "data/make_phantoms.py", "straighten/location_json_local.py", "straighten/straighten_mask_3d.py",
        "Attention/train_classifier.py", "Attention/grad_CAM_3d_sagittal.py", "train.py",
        "eval_3d_sagittal_twostage.py", "evaluation/RHLV_quantification.py", "evaluation/SVM_grading.py",
        "evaluation/SVM_grading.py", "evaluation/generation_eval_sagittal.py"]
    assert all((repo_root / s.script).is_file() for s in steps)


def _produced_before(path: Path, outputs: list[Path]) -> bool:
    """``path`` is an earlier output or lies inside / beside an earlier output folder's tree."""
    return any(path == out or out in path.parents or path in out.parents for out in outputs)


def test_every_step_reads_only_what_an_earlier_step_wrote(tmp_path: Path) -> None:
    paths = DemoPaths(tmp_path)
    for config in (QUICK, replace(QUICK, compare=True)):
        written: list[Path] = [paths.root / "raw"]  # the phantom step writes raw/ beside the split JSON
        for step in build_steps(config, paths, "-1"):
            missing = [p for p in step.inputs if not _produced_before(p, written)]
            assert not missing, f"{step.name} reads {missing} before any step writes it"
            written += list(step.outputs)


def test_the_run_name_and_sizes_reach_the_scripts(tmp_path: Path) -> None:
    paths = DemoPaths(tmp_path, name="trial")
    config = replace(QUICK, gan_ngf=12, svm_folds=4, seed=7)
    steps = {s.name: s for s in build_steps(config, paths, "0")}
    assert _flag(steps["training"], "--name") == _flag(steps["synthesis"], "--name") == "trial"
    assert Path(_flag(steps["synthesis"], "--results_dir")) / "trial" == paths.results
    assert steps["synthesis"].outputs == (paths.results / "label_fake", paths.results / "CT_fake")
    assert _flag(steps["RHLV"], "--out") == str(paths.rhlv)
    assert _flag(steps["SVM grading (neighbours)"], "--rhlv") == str(paths.rhlv_neighbours)
    assert _flag(steps["training"], "--ngf") == "12" and _flag(steps["SVM grading"], "--n_splits") == "4"
    assert all(_flag(s, "--gpu_ids") == "0" for s in steps.values() if "--gpu_ids" in s.args)
    assert _flag(steps["phantoms"], "--seed") == _flag(steps["training"], "--seed") == "7"
    assert _flag(steps["generation metrics"], "--min_slice_voxels") == str(config.generation_min_slice_voxels)


def test_display_is_the_command_a_user_types(tmp_path: Path) -> None:
    step = build_steps(QUICK, DemoPaths(tmp_path / "a b"), "-1")[0]
    assert step.display().startswith("python data/make_phantoms.py --out ")
    assert f"'{tmp_path / 'a b'}'" in step.display()  # quoted for the shell
    assert step.command()[1:] == [step.script, *step.args]


def test_classifier_and_map_steps_pass_the_view_margin_and_windows_the_scripts_accept(tmp_path: Path) -> None:
    from Attention.cam import parse_cam_options
    from Attention.training import parse_classifier_options

    paths = DemoPaths(tmp_path)
    paths.root.mkdir(exist_ok=True)
    paths.split_json.write_text("{}", encoding="utf-8")
    steps = {s.script: s for s in build_steps(QUICK, paths, "-1")}
    classifier = parse_classifier_options(steps["Attention/train_classifier.py"].args)
    assert (classifier.view_mm, classifier.vertebra_margin_mm) == (QUICK.classifier_view_mm,
                                                                   QUICK.classifier_vertebra_margin_mm) == (40.0, 4.0)
    maps = parse_cam_options(steps["Attention/grad_CAM_3d_sagittal.py"].args)
    assert (maps.normalise, maps.windows) == ("volume", "vertebrae")
    published = replace(QUICK, classifier_view_mm=0.0, classifier_vertebra_margin_mm=None, cam_normalise="slice",
                        cam_windows="target")
    whole = {s.script: s for s in build_steps(published, paths, "-1")}
    assert "--vertebra_margin_mm" not in whole["Attention/train_classifier.py"].args
    assert parse_classifier_options(whole["Attention/train_classifier.py"].args).vertebra_margin_mm is None


def test_phantom_accuracy_keeps_the_attention_settings_of_its_tables(tmp_path: Path) -> None:
    """benchmarks/phantom_accuracy.py reproduces its README tables: whole-slice classifier, per-slice maps of the
    target, 8 slices per vertebra, whatever the demo's defaults become."""
    from Attention.cam import parse_cam_options
    from Attention.training import parse_classifier_options
    from benchmarks.phantom_accuracy import BENCHMARK

    paths = DemoPaths(tmp_path)
    paths.root.mkdir(exist_ok=True)
    paths.split_json.write_text("{}", encoding="utf-8")
    steps = {s.script: s for s in build_steps(BENCHMARK, paths, "-1")}
    classifier = parse_classifier_options(steps["Attention/train_classifier.py"].args)
    assert (classifier.view_mm, classifier.vertebra_margin_mm, classifier.slices_per_vertebra) == (0.0, None, 8)
    assert (classifier.n_epochs, classifier.n_epochs_decay, classifier.n_slices) == (6, 6, 20)
    maps = parse_cam_options(steps["Attention/grad_CAM_3d_sagittal.py"].args)
    assert (maps.normalise, maps.windows, maps.n_slices) == ("slice", "target", 20)
