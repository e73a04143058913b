"""The pipeline attacked with bad input and kill -9: no stale outputs, no tracebacks, no orphans.

One test (or a few) per defect of the reliability review, in its order:
1. stale crops and stale synthesis outputs; 2. unwritable output folders; 3. resume with another
architecture; 4. flag validation; 5. temporaries orphaned by SIGKILL; 6. one rule for a listed
vertebra without a crop; 7. report honesty; 8. help and progress; 9. tests that catch planted bugs
(1 - cam fed to the generator, torch RNG restored on resume, grading scaler fitted on the pool).

We run as root, so permissions do not stop writes: an output folder is made unwritable by placing
it under a regular file (``<tmp>/afile/out``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import eval_3d_sagittal_twostage as synthesis_script
import train
from data.crops import crop_affine, list_crop_keys, write_crop
from data.image_io import save_nifti
from data.labels import split_key, vertebra_name
from evaluation import RHLV_quantification, SVM_grading, generation_eval_sagittal
from tests.models.test_synthesis import crop_arrays, tiny_generator, write_checkpoint
from tests.paths import REPO_ROOT
from tests.synthetic_crops import CROP_SIZE, write_synthetic_cohort
from util.checkpoint import load_checkpoint
from util.fileio import (
    OutputDirError,
    atomic_write,
    prepare_output_dir,
    remove_stale_temporaries,
    temporary_owner_pid,
    write_json,
)

TINY = ["--gpu_ids", "-1", "--num_threads", "0", "--ngf", "2", "--ndf", "4", "--mask_height", "16",
        "--hu_window", "-1000", "3000", "--no_progress", "--print_freq", "1", "--display_freq", "2",
        "--seed", "3", "--batch_size", "2", "--max_dataset_size", "3", "--n_epochs", "1", "--n_epochs_decay", "1",
        "--val_freq", "0", "--no_html", "--no_tensorboard"]


def unwritable(tmp_path: Path) -> Path:
    """A folder path that cannot be created: it lies under a regular file."""
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder\n", encoding="utf-8")
    return blocker / "out"


def one_line_error(text: str) -> str:
    """The single error line of stderr ``text`` (fails on a traceback or several error lines;
    progress bars and warnings may come before it)."""
    assert "Traceback" not in text, text
    lines = [line for line in text.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture(scope="module")
def train_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_synthetic_cohort(tmp_path_factory.mktemp("failure_train"))


def run_train(cohort: tuple[Path, Path], checkpoints: Path, name: str, *extra: str) -> int:
    dataroot, split = cohort
    return train.main(["--dataroot", str(dataroot), "--split_json", str(split), "--name", name,
                       "--checkpoints_dir", str(checkpoints), *TINY, *extra])


@pytest.fixture()
def synthesis_cohort(tmp_path: Path) -> dict:
    """Three crops of one case, attention maps, a split and a sagittal checkpoint 'sag'."""
    dataroot, cam_dir = tmp_path / "straightened", tmp_path / "heatmap"
    affine = crop_affine((1.0, 1.0, 1.0), np.zeros(3), CROP_SIZE)
    keys = []
    for target in (19, 20, 21):
        ct, label_map, cam = crop_arrays(target=target)
        key = split_key("syn001", target)
        write_crop(dataroot, key, ct, label_map, affine,
                   {"case": "syn001", "label": target, "name": vertebra_name(target), "crop_size": list(CROP_SIZE),
                    "spacing_mm": [1.0, 1.0, 1.0], "axes": "IPL", "has_ct": True})
        save_nifti(cam, affine, cam_dir / f"{key}.nii.gz")
        keys.append(key)
    split = tmp_path / "vertebra_data.json"
    write_json(split, {"train": {keys[0]: 0}, "val": {keys[1]: 0}, "test": {keys[2]: 2}})
    checkpoints = tmp_path / "checkpoints"
    write_checkpoint(checkpoints / "sag" / "latest.pth", tiny_generator(seed=1), "sagittal")
    return {"dataroot": dataroot, "cam_dir": cam_dir, "keys": keys, "split": split, "checkpoints": checkpoints,
            "results": tmp_path / "results"}


def synthesis_args(cohort: dict, *extra: str, results: Path | None = None) -> list[str]:
    return ["--dataroot", str(cohort["dataroot"]), "--cam_dir", str(cohort["cam_dir"]), "--name", "sag",
            "--results_dir", str(results or cohort["results"]), "--checkpoints_dir", str(cohort["checkpoints"]),
            "--split_json", str(cohort["split"]), "--gpu_ids", "-1", "--no_progress", *extra]


# ------------------------------------------------------------------------------------ 1. stale outputs
def test_restraightening_leaves_exactly_the_crops_of_the_current_inputs(tmp_path: Path, capsys) -> None:
    from straighten.straighten_mask_3d import main as straighten_main
    from tests.straighten.test_straighten_phantom import make_phantom_root

    make_phantom_root(tmp_path, "case", "RAS", (1.5, 1.5, 1.5), seed=2)
    make_phantom_root(tmp_path, "other", "RAS", (1.5, 1.5, 1.5), seed=3)
    out = tmp_path / "straightened"
    flags = ["--root", str(tmp_path), "--out", str(out), "--crop_size", "48", "48", "16", "--spacing", "2.0", "--quiet"]
    assert straighten_main(flags) == 0
    assert list_crop_keys(out) == [f"{case}_{v}" for case in ("case", "other") for v in (20, 21, 22, 23)]
    capsys.readouterr()

    mask_path = tmp_path / "raw" / "case" / "case_msk.nii.gz"
    mask = nib.load(mask_path)
    labels = np.asarray(mask.dataobj)
    labels[labels == 23] = 0  # L4 removed from the mask (relabelled, or deleted)
    nib.save(nib.Nifti1Image(labels, mask.affine, mask.header), mask_path)
    assert straighten_main(flags + ["--cases", "case"]) == 0
    report = capsys.readouterr().out
    assert "removed 1 obsolete crop(s) of an earlier run: case_23" in report
    assert not list(out.rglob("case_23*"))  # CT, label and sidecar
    assert [k for k in list_crop_keys(out) if k.startswith("case_")] == ["case_20", "case_21", "case_22"]

    mask_path.unlink()  # the case now fails: none of its earlier crops may survive
    assert straighten_main(flags) == 1
    report = capsys.readouterr().out
    assert "FAILED case" in report and "removed 3 obsolete crop(s)" in report
    assert list_crop_keys(out) == [f"other_{v}" for v in (20, 21, 22, 23)]
    assert not list(out.rglob("case_*"))


def test_synthesis_redoes_outputs_of_another_checkpoint_or_input(synthesis_cohort: dict, capsys) -> None:
    cohort = synthesis_cohort
    key = cohort["keys"][1]
    out = cohort["results"] / "sag"
    assert synthesis_script.main(synthesis_args(cohort, "--split", "val")) == 0
    first = np.asarray(nib.load(out / "CT_fake" / f"{key}.nii.gz").dataobj).copy()
    record = json.loads((out / "provenance" / f"{key}.json").read_text(encoding="utf-8"))
    assert record["checkpoints"]["sagittal"]["path"] == str((cohort["checkpoints"] / "sag" / "latest.pth").resolve())
    assert synthesis_script.main(synthesis_args(cohort, "--split", "val")) == 0
    assert "1 skipped" in capsys.readouterr().out

    # retrained under the same --name: the old output must not be kept
    write_checkpoint(cohort["checkpoints"] / "sag" / "latest.pth", tiny_generator(seed=7), "sagittal")
    assert synthesis_script.main(synthesis_args(cohort, "--split", "val")) == 0
    report = capsys.readouterr().out
    assert "1 succeeded, 0 skipped" in report and "re-synthesized 1 vertebra(e)" in report
    second = np.asarray(nib.load(out / "CT_fake" / f"{key}.nii.gz").dataobj)
    assert not np.array_equal(first, second)
    new_record = json.loads((out / "provenance" / f"{key}.json").read_text(encoding="utf-8"))
    assert new_record["checkpoints"]["sagittal"]["sha256"] != record["checkpoints"]["sagittal"]["sha256"]

    # a changed attention map (input) is also a reason to redo the vertebra
    cam_path = cohort["cam_dir"] / f"{key}.nii.gz"
    cam = nib.load(cam_path)
    save_nifti(np.asarray(cam.dataobj) * 0.5, cam.affine, cam_path)
    assert synthesis_script.main(synthesis_args(cohort, "--split", "val")) == 0
    assert "re-synthesized 1" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 2. unwritable folders
def test_unwritable_checkpoint_folder_is_one_line_before_training(train_cohort, tmp_path: Path, capsys) -> None:
    bad = unwritable(tmp_path)
    assert run_train(train_cohort, bad, "run") == 1
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith("train.py: error:") and str(bad / "run") in line and "not writable" in line


def test_unwritable_results_dir_is_exit_2_before_any_vertebra(synthesis_cohort: dict, tmp_path: Path,
                                                             capsys, monkeypatch) -> None:
    import models.synthesis.dataset as synthesis

    def no_work(*args, **kwargs):
        raise AssertionError("synthesis started although the results folder is unwritable")

    monkeypatch.setattr(synthesis, "synthesize_plane", no_work)
    bad = unwritable(tmp_path)
    assert synthesis_script.main(synthesis_args(synthesis_cohort, results=bad)) == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err)
    assert str(bad / "sag") in line and "not writable" in line


def test_unwritable_outputs_of_the_evaluation_scripts(tmp_path: Path, capsys) -> None:
    from tests.evaluation.test_grading import rhlv_table

    table = tmp_path / "rhlv.csv"
    rhlv_table({0: 10, 1: 6, 2: 6, 3: 6}, {0: 3, 1: 2, 2: 2, 3: 2}).to_csv(table, index=False)
    bad = unwritable(tmp_path)
    assert SVM_grading.main(["--rhlv", str(table), "--out", str(bad / "g")]) == 1
    assert "not writable" in one_line_error(capsys.readouterr().err)

    label_dir = tmp_path / "label"
    label_dir.mkdir()
    assert RHLV_quantification.main(["--label_dir", str(label_dir), "--reference", "neighbours",
                                     "--out", str(bad / "rhlv.csv")]) == 1
    assert str(bad) in one_line_error(capsys.readouterr().err)

    split = tmp_path / "split.json"
    write_json(split, {"train": {}, "val": {}, "test": {}})
    assert generation_eval_sagittal.main(["--dataroot", str(tmp_path), "--fake_dir", str(tmp_path),
                                          "--split_json", str(split), "--out", str(bad / "gen.csv")]) == 1
    assert "not writable" in one_line_error(capsys.readouterr().err)


def test_unwritable_outputs_of_the_preprocessing_scripts(tmp_path: Path, capsys) -> None:
    from data.make_phantoms import main as phantoms_main
    from straighten.straighten_mask_3d import main as straighten_main

    bad = unwritable(tmp_path)
    assert phantoms_main(["--out", str(bad), "--cases", "1", "--no_progress"]) == 2
    assert "not writable" in one_line_error(capsys.readouterr().err)
    (tmp_path / "raw" / "c").mkdir(parents=True)
    assert straighten_main(["--root", str(tmp_path), "--out", str(bad), "--quiet"]) == 1
    assert "not writable" in one_line_error(capsys.readouterr().err)


def test_unwritable_demo_folder_is_one_line(tmp_path: Path, capsys) -> None:
    import demo

    bad = unwritable(tmp_path)
    assert demo.main(["--out", str(bad), "--device", "cpu"]) == 2
    assert f"{bad}: demo output folder (--out) is not writable" in one_line_error(capsys.readouterr().err)


def test_prepare_output_dir_reports_a_failing_writer(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    def read_only_filesystem(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only_filesystem)
    with pytest.raises(OutputDirError, match=r"out: results folder is not writable \(Read-only file system\)"):
        prepare_output_dir(tmp_path / "out", "results folder")


# -------------------------------------------------------------------------- 3. resume architecture
def test_resume_with_other_architecture_is_one_line_and_keeps_the_options(train_cohort, tmp_path: Path,
                                                                          capsys) -> None:
    assert run_train(train_cohort, tmp_path, "run", "--max_steps", "1") == 0
    folder = tmp_path / "run"
    saved = json.loads((folder / "opt.json").read_text(encoding="utf-8"))
    text_before = (folder / "opt.txt").read_text(encoding="utf-8")
    capsys.readouterr()
    assert run_train(train_cohort, tmp_path, "run", "--continue_train", "--ngf", "4", "--ndf", "8") == 1
    line = one_line_error(capsys.readouterr().err)
    assert "latest.pth" in line and "--ngf 2 -> 4" in line and "--ndf 4 -> 8" in line
    assert json.loads((folder / "opt.json").read_text(encoding="utf-8")) == saved  # still the options of latest.pth
    assert (folder / "opt.txt").read_text(encoding="utf-8") == text_before


def test_options_are_written_only_when_the_run_starts(train_cohort, tmp_path: Path, capsys) -> None:
    split = tmp_path / "no_healthy.json"
    write_json(split, {"train": {"syn001_20": 3}, "val": {}, "test": {}})
    assert run_train((train_cohort[0], split), tmp_path, "bad") == 1
    assert not (tmp_path / "bad" / "opt.json").exists() and not (tmp_path / "bad" / "opt.txt").exists()
    assert run_train(train_cohort, tmp_path, "nockpt", "--continue_train") == 1
    assert not (tmp_path / "nockpt" / "opt.json").exists()


# ---------------------------------------------------------------------------------- 4. flag checks
@pytest.mark.parametrize("flag, value", [("--print_freq", "0"), ("--save_latest_freq", "0"),
                                         ("--display_freq", "0"), ("--save_epoch_freq", "0"),
                                         ("--max_steps", "-5"), ("--val_freq", "-1")])
def test_impossible_training_flags_are_usage_errors(train_cohort, tmp_path: Path, capsys, flag: str,
                                                    value: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        run_train(train_cohort, tmp_path, "flags", flag, value)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag} must be >=" in err and "Traceback" not in err and len(err.splitlines()) <= 2
    assert not (tmp_path / "flags").exists()


def test_missing_cam_dir_is_an_error(train_cohort, tmp_path: Path, synthesis_cohort: dict, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        run_train(train_cohort, tmp_path, "cam", "--cam_dir", str(tmp_path / "no_such_maps"))
    assert stopped.value.code == 2 and "no_such_maps: folder not found" in capsys.readouterr().err
    args = synthesis_args(synthesis_cohort)
    args[args.index("--cam_dir") + 1] = str(tmp_path / "no_such_maps")
    with pytest.raises(SystemExit):
        synthesis_script.main(args)
    assert "no_such_maps: folder not found" in capsys.readouterr().err


def test_batch_larger_than_the_dataset_warns(train_cohort, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="--batch_size 8 x 1 process.* exceeds the 3 training vertebrae"):
        assert run_train(train_cohort, tmp_path, "big", "--batch_size", "8", "--max_steps", "1") == 0


@pytest.mark.parametrize("argv, message", [(["--cases", "0"], "--cases 0: the demo needs at least 3"),
                                           (["--cases", "2"], "--cases 2"),
                                           (["--gan_epochs", "0"], "--gan_epochs 0"),
                                           (["--threads", "-1"], "--threads -1")])
def test_demo_refuses_impossible_settings_up_front(tmp_path: Path, capsys, monkeypatch, argv, message) -> None:
    import demo

    monkeypatch.setattr(demo, "run_pipeline", lambda *a, **k: pytest.fail("a step ran"))
    assert demo.main([*argv, "--out", str(tmp_path / "demo")]) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "demo").exists()


# --------------------------------------------------------------------------------- 5. kill -9 orphans
def dead_pid() -> int:
    """The id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temporary_names_carry_our_tag_and_pid(tmp_path: Path) -> None:
    seen = []
    with atomic_write(tmp_path / "latest.pth", "wb") as handle:
        seen.append(Path(handle.name).name)
    assert temporary_owner_pid(seen[0]) == os.getpid() and seen[0].startswith(".latest.hvtmp-")
    assert temporary_owner_pid(".latest.abc123.pth") is None  # other programs' dot files are left alone


def test_stale_temporaries_are_removed_at_start_up_and_live_ones_kept(train_cohort, tmp_path: Path,
                                                                      capsys) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    orphan = folder / f".latest.hvtmp-{dead_pid()}-abc_12.pth"
    orphan.write_bytes(b"\0" * 1000)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = folder / f".latest.hvtmp-{sleeper.pid}-xyz.pth"  # another process writing right now
        live.write_bytes(b"partial")
        foreign = folder / ".latest.abc123.pth"
        foreign.write_bytes(b"not ours")
        assert run_train(train_cohort, tmp_path, "run", "--max_steps", "1") == 0
        assert "note: removed 1 partial file(s) left by an interrupted run in" in capsys.readouterr().err
        assert not orphan.exists() and live.exists() and foreign.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temporaries(folder) == [live]


WRITER = """
import sys, time
from util.fileio import atomic_write
with atomic_write(sys.argv[1], "wb") as handle:
    handle.write(b"x" * 100000)
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def test_sigkill_during_a_write_leaves_an_orphan_that_the_next_run_removes(tmp_path: Path, capsys) -> None:
    target = tmp_path / "label_fake" / "case_20.nii.gz"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              encoding="utf-8", env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    orphans = list(target.parent.glob(".case_20.hvtmp-*.nii.gz"))
    assert len(orphans) == 1 and orphans[0].stat().st_size == 100000 and not target.exists()
    assert temporary_owner_pid(orphans[0].name) == writer.pid
    prepare_output_dir(target.parent, "synthesis output folder")
    assert not orphans[0].exists()
    assert f"removed 1 partial file(s) left by an interrupted run in {target.parent}" in capsys.readouterr().err


# ------------------------------------------------------------------ 6. a listed crop that is missing
def test_every_step_refuses_a_listed_vertebra_without_a_crop(train_cohort, synthesis_cohort: dict,
                                                            tmp_path: Path, capsys) -> None:
    """The rule (README, 'Missing crops'): refuse before any work, naming every missing crop file."""
    dataroot, split = train_cohort
    listed = json.loads(split.read_text(encoding="utf-8"))
    listed["train"]["syn009_20"] = 0
    listed["train"]["syn009_21"] = 0
    listed["val"]["syn008_20"] = 0
    bad_split = tmp_path / "split_with_gaps.json"
    write_json(bad_split, listed)
    missing = ["syn009_20.nii.gz", "syn009_21.nii.gz"]

    assert run_train((dataroot, bad_split), tmp_path, "gaps", "--max_dataset_size", "inf") == 1
    line = one_line_error(capsys.readouterr().err)
    assert "split_with_gaps.json" in line and all(name in line for name in missing)
    assert not (tmp_path / "gaps" / "latest.pth").exists()

    from Attention.train_classifier import main as classifier_main
    assert classifier_main(["--dataroot", str(dataroot), "--split_json", str(bad_split), "--name", "cls",
                            "--checkpoints_dir", str(tmp_path), "--arch", "small", "--gpu_ids", "-1"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert all(name in line for name in [*missing, "syn008_20.nii.gz"])
    assert not (tmp_path / "cls" / "classifier.pth").exists()

    out = tmp_path / "rhlv.csv"
    assert RHLV_quantification.main(["--label_dir", str(dataroot / "label"), "--reference", "neighbours",
                                     "--split_json", str(bad_split), "--out", str(out), "--workers", "1"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert all(name in line for name in [*missing, "syn008_20.nii.gz"]) and not out.exists()

    gen = tmp_path / "gen.csv"
    assert generation_eval_sagittal.main(["--dataroot", str(dataroot), "--fake_dir", str(tmp_path),
                                          "--split_json", str(bad_split), "--out", str(gen)]) == 1
    assert "syn008_20.nii.gz" in one_line_error(capsys.readouterr().err) and not gen.exists()

    cohort = synthesis_cohort
    gap_split = tmp_path / "synthesis_split.json"
    write_json(gap_split, {"train": {}, "val": {cohort["keys"][1]: 0, "syn001_25": 0}, "test": {}})
    args = synthesis_args(cohort, "--split", "val")
    args[args.index("--split_json") + 1] = str(gap_split)
    assert synthesis_script.main(args) == 2
    assert "syn001_25.nii.gz" in one_line_error(capsys.readouterr().err)
    assert not (cohort["results"] / "sag" / "CT_fake" / f"{cohort['keys'][1]}.nii.gz").exists()


# ------------------------------------------------------------------------------------ 8. help, progress
def test_readme_and_demo_help_agree_on_the_quick_duration(capsys) -> None:
    import demo

    with pytest.raises(SystemExit):
        demo.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    readme = " ".join((REPO_ROOT / "README.md").read_text(encoding="utf-8").split())
    assert demo.QUICK_DURATION in help_text and demo.QUICK_DURATION in readme


def test_demo_prints_a_heartbeat_with_the_steps_progress(tmp_path: Path, monkeypatch) -> None:
    from pipeline import runner
    from pipeline.run import Step

    monkeypatch.setattr(runner, "HEARTBEAT_S", 0.5)
    script = ("import sys, time\n"
              "for i in range(1, 5):\n"
              "    sys.stderr.write(f'\\repoch {i}/4: {25 * i}%'); sys.stderr.flush(); time.sleep(0.6)\n")
    (tmp_path / "slow_step.py").write_text(script, encoding="utf-8")
    step = Step("slow", str(tmp_path / "slow_step.py"), [], "nothing", (), ())
    beats: list[str] = []
    result = runner.run_step(step, tmp_path, 1, heartbeat=beats.append)
    assert result.returncode == 0 and len(beats) >= 2
    assert all("epoch" in beat and "%" in beat for beat in beats)
    assert beats[-1] != beats[0]  # it follows the step's progress


# --------------------------------------------------------------------------------- 9. planted bugs
def test_the_generator_receives_one_minus_the_attention_map() -> None:
    """HGAM feeds the generator 1 - cam; a non-symmetric map tells 1 - cam from cam."""
    import models
    from models.synthetic import synthetic_batch
    from tests.models.test_models import model_options

    opt = model_options("--ngf", "8", "--ndf", "8")
    model = models.create_model(opt)
    model.setup(opt)
    batch = synthetic_batch(2, 64)
    cam = torch.zeros(2, 1, 64, 64)
    cam[:, :, 20:44, 16:48] = torch.linspace(0.1, 0.9, 32)  # values 0.1..0.9, never 0.5-symmetric
    batch["cam"] = cam
    received = []
    model.netG.coarse.register_forward_pre_hook(lambda module, args: received.append(args[3].detach().clone()))
    model.set_input(batch)
    model.forward()
    assert len(received) == 1
    torch.testing.assert_close(received[0], 1.0 - cam)


def test_wgangp_resume_restores_the_torch_rng(train_cohort, tmp_path: Path) -> None:
    """The gradient penalty draws from torch's RNG: a resume that does not restore it diverges."""
    from tests.scripts.test_train import assert_same_weights, loss_rows

    flags = ["--gan_mode", "wgangp", "--deterministic"]
    assert run_train(train_cohort, tmp_path, "full", *flags) == 0
    assert run_train(train_cohort, tmp_path, "cut", *flags, "--max_steps", "3", "--save_latest_freq", "1") == 0
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    assert run_train(train_cohort, tmp_path, "cut", *flags, "--continue_train") == 0
    full = load_checkpoint(tmp_path / "full" / "latest.pth")
    resumed = load_checkpoint(tmp_path / "cut" / "latest.pth")
    assert resumed["progress"] == full["progress"]
    assert_same_weights(full["model"]["nets"], resumed["model"]["nets"])
    assert loss_rows(tmp_path / "cut") == loss_rows(tmp_path / "full")


def grading_table_with_a_val_from_another_site(val_counts: dict[int, int], val_spread: float) -> pd.DataFrame:
    """A pool (train+test) with overlapping grades and a val split drawn with another spread."""
    from tests.evaluation.test_grading import rhlv_table

    pool = rhlv_table({0: 12, 1: 9, 2: 9, 3: 9}, {}, spread=0.05, seed=0)
    val = rhlv_table({}, val_counts, spread=val_spread, seed=100)
    val["Vertebra"] = [f"val{i:04d}_{20 + grade}" for i, grade in enumerate(val["Label"])]
    return pd.concat([pool, val], ignore_index=True)


def test_grading_scaler_is_fitted_on_the_training_folds_not_on_val() -> None:
    """val holds only grade-3 vertebrae, tightly clustered: standardised with the training folds'
    statistics they stay on the grade-3 side; standardised with their own they would land mid-scale."""
    from evaluation.grading import evaluate_grading, feature_table, prepare_grading_data

    data = prepare_grading_data(*feature_table(grading_table_with_a_val_from_another_site({3: 8}, 0.01)), 3)
    for fold in evaluate_grading(data, 3)["folds"]:
        matrix = np.asarray(fold["confusion_matrix"])
        assert matrix[3, 3] == 8, matrix  # every val vertebra graded 3


def test_grading_predictions_equal_a_pool_fitted_reference_on_a_shifted_val() -> None:
    """Each fold's val predictions equal those of StandardScaler + linear SVC fitted on the fold's
    training rows only, on a val split far wider than the pool (where a val-fitted scaler, even one
    applied to both, changes the SVM's regularisation and so its predictions)."""
    from sklearn.metrics import confusion_matrix
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from evaluation.grading import evaluate_grading, feature_table, grading_folds, prepare_grading_data

    data = prepare_grading_data(*feature_table(grading_table_with_a_val_from_another_site({3: 8}, 0.5)), 3)
    report = evaluate_grading(data, 3)
    for fold, (train_index, _) in zip(report["folds"], grading_folds(data.pool_y, 3, 0)):
        scaler = StandardScaler().fit(data.pool_x[train_index])
        svm = SVC(kernel="linear", class_weight="balanced").fit(scaler.transform(data.pool_x[train_index]),
                                                                data.pool_y[train_index])
        expected = confusion_matrix(data.val_y, svm.predict(scaler.transform(data.val_x)), labels=data.classes)
        np.testing.assert_array_equal(fold["confusion_matrix"], expected)


# ------------------------------------------------------------------------------------ 7. report honesty
def test_report_headline_names_partial_and_failed_steps(tmp_path: Path) -> None:
    from pipeline.run import QUICK, DemoPaths, PipelineRun, StepResult
    from pipeline.run_report import run_status_html

    def step(name: str, returncode: int | None, present: int) -> StepResult:
        return StepResult(name, f"python {name}.py", "x", returncode, present, 1)

    run = PipelineRun(QUICK, DemoPaths(tmp_path), "-1", [step("phantoms", 0, 1), step("RHLV", 1, 1)])
    headline = run_status_html(run)
    assert run.ok and "class='warn'" in headline and "RHLV" in headline and "partly" in headline
    assert "completely" not in headline
    run.steps.append(step("grading", 1, 0))
    assert "class='bad'" in run_status_html(run) and "grading" in run_status_html(run)
    run.steps[1:] = [step("RHLV", 0, 1)]
    assert run_status_html(run) == "<span class='ok'>every step ran completely</span>"


def test_summed_confusion_matrix_says_it_counts_each_val_vertebra_once_per_fold(tmp_path: Path) -> None:
    import matplotlib.image

    from evaluation.grading import evaluate_grading, feature_table, prepare_grading_data
    from evaluation.plots import grading_confusion_panels, save_confusion_matrices
    from tests.evaluation.test_grading import rhlv_table

    data = prepare_grading_data(*feature_table(rhlv_table({0: 25, 1: 10, 2: 10, 3: 10}, {0: 4, 1: 4, 2: 4, 3: 4})))
    report = evaluate_grading(data)
    matrices, titles = grading_confusion_panels(report)
    assert len(matrices) == 6 and int(matrices[-1].sum()) == 5 * 16
    assert titles[-1] == "sum of the 5 folds: each of the 16 val\nvertebrae counted 5 times (80 predictions)"
    assert titles[0] == "fold 1: val (16 vertebrae)" and int(matrices[0].sum()) == 16
    png = save_confusion_matrices(matrices, titles, report["classes"], tmp_path / "m.png")
    height, width = matplotlib.image.imread(png).shape[:2]
    assert width <= 1000 and height > width / 2  # a 3-column grid: shown at page width, digits are not shrunk


def test_rhlv_scatter_panels_share_one_y_axis(tmp_path: Path) -> None:
    from evaluation.phantom_truth import compare_to_truth, truth_table
    from pipeline.figures import scatter_figure
    from tests.scripts.test_demo import _truth_file, _vertebra

    _truth_file(tmp_path, "ph000", [_vertebra(20, 0, "none", (0.0, 0.0, 0.0), False),
                                    _vertebra(21, 3, "wedge", (0.45, 0.2, 0.0), True)])
    truth = truth_table(tmp_path / "raw")

    def comparison(values: list[float]) -> pd.DataFrame:
        rhlv = pd.DataFrame({"Vertebra": ["ph000_20", "ph000_21"], "Pre RHLV": values, "Mid RHLV": values,
                             "Post RHLV": values})
        return compare_to_truth(rhlv, truth)

    figure = scatter_figure({"narrow": comparison([0.0, 0.3]), "wide": comparison([-0.6, 1.4])})
    first, second = figure.axes[:2]
    assert first.get_ylim() == second.get_ylim()
    assert first.get_ylim()[0] <= -0.6 and first.get_ylim()[1] >= 1.4


def test_attention_panels_flag_maps_that_miss_the_target() -> None:
    from pipeline.figures import attention_title

    target = np.zeros((12, 12), dtype=bool)
    target[4:8, 4:8] = True
    on_target = np.where(target, 0.8, 0.05)
    off_target = np.zeros((12, 12))
    off_target[0, :] = 0.9  # all attention on a row above the body and its 2 pixels of slack
    assert "MISSES TARGET" not in attention_title(on_target, target)
    assert "MISSES TARGET" in attention_title(off_target, target)
    assert "0% on target" in attention_title(off_target, target)
    assert attention_title(np.zeros((12, 12)), target) == "attention: none (all zero)"
