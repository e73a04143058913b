"""pipeline/runner.py: one step as a subprocess (log, status, CPU threads) and the output folder rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.run import Step
from pipeline.runner import log_tail, prepare_out_dir, run_step, skipped_result, step_environment


def _python_step(tmp_path: Path, name: str, code: str, outputs: tuple[Path, ...] = ()) -> Step:
    script = tmp_path / f"{name}.py"
    script.write_text(code, encoding="utf-8")
    return Step(name, str(script), ["--flag", "1"], "x", (), outputs)


def test_a_step_that_fails_after_writing_its_output_is_partial(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    step = _python_step(tmp_path, "half", f"import sys\nopen({str(out)!r}, 'w').write('x')\n"
                                          "print('item 3 failed', sys.argv[1:])\nsys.exit(1)\n", (out,))
    result = run_step(step, tmp_path, 4)
    assert (result.returncode, result.outputs_present, result.outputs_expected, result.status) == (1, 1, 1, "partial")
    log = Path(result.log)
    assert log.name == "04_half.log"
    assert log.read_text(encoding="utf-8").splitlines()[1] == "item 3 failed ['--flag', '1']"
    assert result.command == step.display() and result.wall_s > 0


def test_a_step_without_its_outputs_failed(tmp_path: Path) -> None:
    result = run_step(_python_step(tmp_path, "none", "pass\n", (tmp_path / "never.txt",)), tmp_path, 1)
    assert (result.returncode, result.outputs_present, result.status) == (0, 0, "failed")


def test_thread_cap_reaches_the_step(tmp_path: Path) -> None:
    code = "import os\nprint(os.environ.get('OMP_NUM_THREADS'), os.environ.get('MKL_NUM_THREADS'))\n"
    result = run_step(_python_step(tmp_path, "threads", code), tmp_path, 1, threads=3)
    assert log_tail(result.log, 1) == "3 3"
    assert step_environment(0) == dict(os.environ)  # 0: the caller's environment, PyTorch's default threads


def test_log_tail_keeps_the_last_state_of_a_progress_bar(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("start\n\nepoch 1/3\repoch 2/3\repoch 3/3\ndone\n", encoding="utf-8")
    assert log_tail(log, 2) == "epoch 3/3\ndone"
    assert log_tail(log) == "start\nepoch 3/3\ndone"


def test_out_dir_with_an_earlier_run_needs_overwrite(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "demo_summary.json").write_text("{}", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_out_dir(tmp_path, overwrite=False)
    prepare_out_dir(tmp_path, overwrite=True)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "demo_summary.json").exists()
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "keep me"



def test_a_step_whose_input_is_missing_is_skipped_naming_the_first_missing_path(tmp_path: Path) -> None:
    present, absent = tmp_path / "crops", tmp_path / "maps"
    present.mkdir()
    step = Step("attention maps", "Attention/grad_CAM_3d_sagittal.py", [], "maps/", (present, absent), ())
    result = skipped_result(step)
    assert result is not None and result.name == "attention maps" and result.status == "skipped"
    assert result.log == f"skipped: {absent} is missing"
    absent.mkdir()
    assert skipped_result(step) is None
