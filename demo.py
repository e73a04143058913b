"""One-command demo: the whole HealthiVert-GAN pipeline on a fresh phantom cohort, with an HTML report.

    python demo.py [--out demo_out] [--device cpu|cuda] [--quick] [--compare]

Runs, in order, the same scripts a user runs by hand (each as a subprocess, its output in
``<out>/logs/``): phantom cohort -> centroids -> straightening -> fracture classifier -> attention
maps -> HealthiVert-GAN training -> iterative synthesis -> RHLV (HealthiVert-GAN and the neighbour
baseline) -> SVM grading (both) -> generation metrics. Then it writes ``<out>/report/index.html``
(self-contained) and prints a one-screen summary with the numbers against the phantom truth.
``--compare`` also trains the paper's baselines on the same cohort and splits (AOT-GAN through the same
synthesis, RHLV and SVM grading; the 3D SupCon-SENet grader on the same folds) and builds the paper's
comparison table (``evaluation/compare_methods.py``) with the neighbour rule beside them.

The demo uses CPU-sized settings (64 x 64 x 32 crops at 2 mm, a small classifier, a narrow generator
(ngf 8) and a short training budget); every script keeps the paper's sizes as its own defaults.
``--quick`` is a smaller cohort and a shorter training, to check that everything runs (its numbers
mean little). Each step runs on one CPU thread by default (``--threads``): these small tensors gain
nothing from more, and on a busy machine two OpenMP threads were several times slower.

A step whose inputs are missing (an earlier step failed) is skipped; a step that wrote its outputs
but reported failed items (e.g. vertebrae the RHLV could not measure) is ``partial``. Exit status 0
when every step ran and wrote its outputs, 1 otherwise; the report is written in both cases.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from util.fileio import OutputDirError, prepare_output_dir, write_json

REPO_ROOT = Path(__file__).resolve().parent

DEMO_ENTRIES = ("raw", "straightened", "heatmap", "checkpoints", "results", "logs", "report",
                "vertebra_data.json", "demo_summary.json")
CLASSIFIER_NAME = "classifier"
GAN_NAME = "healthivert"
AOT_NAME = "aotgan"
GRADER_NAME = "supcon_senet"
GENERATION_MIN_VOXELS_AT_1MM = 400  # DESIGN 5: slices with > 400 target voxels at 1 mm
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
MIN_CASES = 3  # the split needs at least one case each in train, val and test
QUICK_DURATION = "480 instead of 2400 training iterations"  # the README says the same; wall time depends on the machine
HEARTBEAT_S = 30.0  # a step running longer than this prints its latest progress line this often


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and budgets of one demo run (every field maps to a flag of one pipeline script).

    crop_size: straightened crop shape (S->I, A->P, R->L voxels); spacing_mm: isotropic crop voxel size.
    classifier_*: Attention/train_classifier.py; cam_slices: Attention/grad_CAM_3d_sagittal.py;
    gan_*: train.py (epochs = passes over the healthy training vertebrae, one slice each);
    svm_folds: evaluation/SVM_grading.py --n_splits. compare: also run the baselines (``--compare``):
    aot_*: train.py --model aotgan (same epochs and batch as HealthiVert-GAN); grader_*:
    Attention/train_grader3d.py --arch small.
    """

    cases: int = 8
    vertebrae: str = "T10-L5"
    seed: int = 1
    crop_size: tuple[int, int, int] = (64, 64, 32)
    spacing_mm: float = 2.0
    classifier_epochs: int = 4
    classifier_epochs_decay: int = 4
    classifier_slices: int = 16
    classifier_slices_per_vertebra: int = 8
    cam_slices: int = 16
    gan_ngf: int = 8
    gan_ndf: int = 16
    gan_batch_size: int = 4
    gan_epochs: int = 300
    gan_epochs_decay: int = 100
    gan_local_width: int = 32
    svm_folds: int = 5
    workers: int = 2
    compare: bool = False
    aot_ngf: int = 16
    aot_blocks: int = 4
    grader_base_width: int = 16
    grader_epochs: int = 20
    grader_epochs_decay: int = 10
    grader_batch_size: int = 8

    @property
    def generation_min_slice_voxels(self) -> int:
        """DESIGN 5's 400-voxel slice threshold at 1 mm, scaled to the crop's voxel area."""
        return max(1, round(GENERATION_MIN_VOXELS_AT_1MM / self.spacing_mm ** 2))


QUICK = DemoConfig(cases=4, classifier_epochs=1, classifier_epochs_decay=1, classifier_slices=8,
                   classifier_slices_per_vertebra=4, cam_slices=8, gan_epochs=120, gan_epochs_decay=40, svm_folds=3,
                   grader_epochs=4, grader_epochs_decay=2)
FULL = DemoConfig()


@dataclass(frozen=True)
class DemoPaths:
    """Where every artefact of a demo run goes, under ``root``."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def split_json(self) -> Path:
        return self.root / "vertebra_data.json"

    @property
    def dataroot(self) -> Path:
        return self.root / "straightened"

    @property
    def heatmap(self) -> Path:
        return self.root / "heatmap"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def results(self) -> Path:
        """``R/N``: synthesis outputs and every evaluation of them."""
        return self.root / "results" / GAN_NAME

    @property
    def aot_results(self) -> Path:
        """AOT-GAN's synthesis, RHLV table and grading (``--compare``)."""
        return self.root / "results" / AOT_NAME

    @property
    def grader_results(self) -> Path:
        """The 3D SupCon-SENet predictions and grading (``--compare``)."""
        return self.root / "results" / GRADER_NAME

    @property
    def comparison(self) -> Path:
        """The comparison table folder (``--compare``)."""
        return self.root / "results" / "comparison"

    @property
    def rhlv(self) -> Path:
        return self.results / "rhlv.csv"

    @property
    def rhlv_neighbours(self) -> Path:
        return self.results / "rhlv_neighbours.csv"

    @property
    def maps(self) -> Path:
        return self.results / "maps"

    @property
    def grading(self) -> Path:
        return self.results / "grading"

    @property
    def grading_neighbours(self) -> Path:
        return self.results / "grading_neighbours"

    @property
    def generation(self) -> Path:
        return self.results / "generation.csv"

    @property
    def generation_summary(self) -> Path:
        return self.results / "generation_summary.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def report(self) -> Path:
        return self.root / "report" / "index.html"

    @property
    def summary_json(self) -> Path:
        return self.root / "demo_summary.json"


@dataclass(frozen=True)
class Step:
    """One pipeline step: a repository script and its arguments, the files it needs (``inputs``: the
    step is skipped when one is missing) and the files it writes (``outputs``)."""

    name: str
    script: str
    args: list[str]
    artefact: str
    inputs: tuple[Path, ...]
    outputs: tuple[Path, ...]

    def command(self) -> list[str]:
        """The command line run from the repository root."""
        return [sys.executable, self.script, *self.args]

    def display(self) -> str:
        """The command as a user types it (``python <script> ...``)."""
        return shlex.join(["python", self.script, *self.args])


@dataclass
class StepResult:
    """Outcome of one step: exit status (None: not run), how many of its outputs exist, wall and child
    CPU seconds, log file. A step that exits non-zero but wrote some of its outputs (a batch where
    some vertebrae failed) is ``partial``; later steps run when their inputs exist."""

    name: str
    command: str
    artefact: str
    returncode: int | None = None
    outputs_present: int = 0
    outputs_expected: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    log: str = ""

    @property
    def status(self) -> str:
        if self.returncode is None:
            return "skipped"
        if self.returncode == 0 and self.outputs_present == self.outputs_expected:
            return "ok"
        return "partial" if self.outputs_present else "failed"


@dataclass
class PipelineRun:
    """Everything a demo run did: configuration, paths, per-step results."""

    config: DemoConfig
    paths: DemoPaths
    gpu_ids: str
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every step ran and wrote its outputs (``partial`` steps count: their failures are listed)."""
        return all(step.status in ("ok", "partial") for step in self.steps)

    @property
    def total_wall_s(self) -> float:
        return sum(step.wall_s for step in self.steps)


def build_steps(config: DemoConfig, paths: DemoPaths, gpu_ids: str) -> list[Step]:
    """The pipeline as script invocations, in order (DESIGN 7 command lines plus the demo's sizes)."""
    p = paths
    device = ["--gpu_ids", gpu_ids]
    crop = [str(n) for n in config.crop_size]
    gan_common = ["--dataroot", str(p.dataroot), "--split_json", str(p.split_json), "--cam_dir", str(p.heatmap),
                  "--name", GAN_NAME, "--checkpoints_dir", str(p.checkpoints), "--ngf", str(config.gan_ngf),
                  "--seed", str(config.seed), "--num_threads", "0", *device]  # progress bars feed the heartbeat
    steps = [
        Step("phantoms", "data/make_phantoms.py",
             ["--out", str(p.root), "--cases", str(config.cases), "--seed", str(config.seed),
              "--vertebrae", config.vertebrae, "--workers", str(config.workers), "--no_progress"],
             f"{p.raw}/<case>/ (CT, mask, truth), {p.split_json}", (), (p.split_json,)),
        Step("centroids", "straighten/location_json_local.py", ["--root", str(p.root), "--quiet"],
             f"{p.raw}/<case>/<case>.json", (p.split_json,), (p.raw,)),
        Step("straightening", "straighten/straighten_mask_3d.py",
             ["--root", str(p.root), "--out", str(p.dataroot), "--crop_size", *crop,
              "--spacing", str(config.spacing_mm), "--workers", str(config.workers), "--quiet"],
             f"{p.dataroot}/{{CT,label}}/", (p.raw,), (p.dataroot / "label",)),
        Step("classifier", "Attention/train_classifier.py",
             ["--dataroot", str(p.dataroot), "--split_json", str(p.split_json), "--name", CLASSIFIER_NAME,
              "--checkpoints_dir", str(p.checkpoints), "--arch", "small",
              "--n_epochs", str(config.classifier_epochs), "--n_epochs_decay", str(config.classifier_epochs_decay),
              "--n_slices", str(config.classifier_slices),
              "--slices_per_vertebra", str(config.classifier_slices_per_vertebra),
              "--seed", str(config.seed), *device],
             f"{p.checkpoints / CLASSIFIER_NAME}/classifier.pth", (p.dataroot / "label",),
             (p.checkpoints / CLASSIFIER_NAME / "classifier.pth",)),
        Step("attention maps", "Attention/grad_CAM_3d_sagittal.py",
             ["--dataroot", str(p.dataroot), "--name", CLASSIFIER_NAME, "--checkpoints_dir", str(p.checkpoints),
              "--out", str(p.heatmap), "--n_slices", str(config.cam_slices), "--no_png", "--seed", str(config.seed),
              *device],
             f"{p.heatmap}/<key>.nii.gz", (p.checkpoints / CLASSIFIER_NAME / "classifier.pth",), (p.heatmap,)),
        Step("training", "train.py",
             [*gan_common, "--ndf", str(config.gan_ndf), "--batch_size", str(config.gan_batch_size),
              "--n_epochs", str(config.gan_epochs), "--n_epochs_decay", str(config.gan_epochs_decay),
              "--local_width", str(config.gan_local_width), "--val_freq", "0", "--no_html",
              "--save_epoch_freq", str(config.gan_epochs + config.gan_epochs_decay), "--print_freq", "4"],
             f"{p.checkpoints / GAN_NAME}/latest.pth, loss_log.csv", (p.dataroot / "label",),
             (p.checkpoints / GAN_NAME / "latest.pth",)),
        Step("synthesis", "eval_3d_sagittal_twostage.py",
             [*gan_common, "--results_dir", str(p.results.parent), "--eval"],
             f"{p.results}/{{CT_fake,label_fake}}/", (p.checkpoints / GAN_NAME / "latest.pth",),
             (p.results / "label_fake",)),
        Step("RHLV", "evaluation/RHLV_quantification.py",
             ["--label_dir", str(p.dataroot / "label"), "--fake_dir", str(p.results / "label_fake"),
              "--split_json", str(p.split_json), "--out", str(p.rhlv), "--reference", "both",
              "--maps", str(p.maps), "--workers", str(config.workers)],
             f"{p.rhlv}, {p.rhlv_neighbours}, {p.maps}/", (p.dataroot / "label",), (p.rhlv, p.rhlv_neighbours)),
        Step("SVM grading", "evaluation/SVM_grading.py",
             ["--rhlv", str(p.rhlv), "--out", str(p.grading), "--n_splits", str(config.svm_folds),
              "--seed", str(config.seed)],
             f"{p.grading}/grading.json", (p.rhlv,), (p.grading / "grading.json",)),
        Step("SVM grading (neighbours)", "evaluation/SVM_grading.py",
             ["--rhlv", str(p.rhlv_neighbours), "--out", str(p.grading_neighbours),
              "--n_splits", str(config.svm_folds), "--seed", str(config.seed)],
             f"{p.grading_neighbours}/grading.json", (p.rhlv_neighbours,),
             (p.grading_neighbours / "grading.json",)),
        Step("generation metrics", "evaluation/generation_eval_sagittal.py",
             ["--dataroot", str(p.dataroot), "--fake_dir", str(p.results), "--split_json", str(p.split_json),
              "--out", str(p.generation), "--min_slice_voxels", str(config.generation_min_slice_voxels)],
             f"{p.generation}, {p.generation_summary}", (p.results / "CT_fake",), (p.generation_summary,)),
    ]
    return steps + comparison_steps(config, paths, gpu_ids) if config.compare else steps


def comparison_steps(config: DemoConfig, paths: DemoPaths, gpu_ids: str) -> list[Step]:
    """The paper's baselines on the same cohort, splits and folds, then the comparison table (``--compare``)."""
    p = paths
    device = ["--gpu_ids", gpu_ids]
    aot_checkpoint = p.checkpoints / AOT_NAME / "latest.pth"
    aot_common = ["--dataroot", str(p.dataroot), "--split_json", str(p.split_json), "--name", AOT_NAME,
                  "--checkpoints_dir", str(p.checkpoints), "--model", "aotgan", "--ngf", str(config.aot_ngf),
                  "--aot_blocks", str(config.aot_blocks), "--seed", str(config.seed), "--num_threads", "0",
                  "--no_progress", *device]
    folds = ["--n_splits", str(config.svm_folds), "--seed", str(config.seed)]
    return [
        Step("AOT-GAN training", "train.py",
             [*aot_common, "--ndf", str(config.gan_ndf), "--batch_size", str(config.gan_batch_size),
              "--n_epochs", str(config.gan_epochs), "--n_epochs_decay", str(config.gan_epochs_decay),
              "--val_freq", "0", "--no_html", "--save_epoch_freq", str(config.gan_epochs + config.gan_epochs_decay),
              "--print_freq", "4"],
             f"{aot_checkpoint}", (p.dataroot / "label",), (aot_checkpoint,)),
        Step("AOT-GAN synthesis", "eval_3d_sagittal_twostage.py",
             [*aot_common, "--results_dir", str(p.aot_results.parent), "--eval"],
             f"{p.aot_results}/{{CT_fake,label_fake}}/", (aot_checkpoint,), (p.aot_results / "label_fake",)),
        Step("AOT-GAN RHLV", "evaluation/RHLV_quantification.py",
             ["--label_dir", str(p.dataroot / "label"), "--fake_dir", str(p.aot_results / "label_fake"),
              "--split_json", str(p.split_json), "--out", str(p.aot_results / "rhlv.csv"),
              "--workers", str(config.workers)],
             f"{p.aot_results / 'rhlv.csv'}", (p.aot_results / "label_fake",), (p.aot_results / "rhlv.csv",)),
        Step("AOT-GAN SVM grading", "evaluation/SVM_grading.py",
             ["--rhlv", str(p.aot_results / "rhlv.csv"), "--out", str(p.aot_results / "grading"), *folds],
             f"{p.aot_results / 'grading'}/grading.json", (p.aot_results / "rhlv.csv",),
             (p.aot_results / "grading" / "grading.json",)),
        Step("3D SupCon-SENet", "Attention/train_grader3d.py",
             ["--dataroot", str(p.dataroot), "--split_json", str(p.split_json), "--name", GRADER_NAME,
              "--checkpoints_dir", str(p.checkpoints), "--results_dir", str(p.grader_results.parent),
              "--arch", "small", "--base_width", str(config.grader_base_width),
              "--n_epochs", str(config.grader_epochs), "--n_epochs_decay", str(config.grader_epochs_decay),
              "--batch_size", str(config.grader_batch_size), "--n_splits", str(config.svm_folds),
              "--grading_seed", str(config.seed), "--seed", str(config.seed), *device],
             f"{p.grader_results}/predictions.csv, grading/grading.json", (p.dataroot / "label",),
             (p.grader_results / "grading" / "grading.json",)),
        Step("comparison table", "evaluation/compare_methods.py",
             ["--out", str(p.comparison), "--results_dir", str(p.comparison.parent),
              "--cohort", f"phantom, {config.cases} cases ({config.vertebrae})"],
             f"{p.comparison}/comparison.{{md,csv,png}}", (), (p.comparison / "comparison.csv",)),
    ]


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def step_environment(threads: int | None) -> dict[str, str]:
    """Environment of the step subprocesses: ``threads`` > 0 caps the CPU threads of PyTorch/OpenMP/MKL."""
    env = dict(os.environ)
    if threads:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    return env


def last_log_line(path: str | Path) -> str:
    """The latest line of a log, progress-bar updates (carriage returns) included; '' when empty."""
    tail = log_tail(path, 1)
    return tail.splitlines()[-1].strip() if tail else ""


def run_step(step: Step, log_dir: Path, index: int, verbose: bool = False, threads: int | None = None,
             heartbeat: Callable[[str], None] | None = None) -> StepResult:
    """Run one step from the repository root; stdout and stderr go to ``log_dir/<NN>_<name>.log``
    (and to the terminal with ``verbose``). Without ``verbose``, ``heartbeat`` receives every
    ``HEARTBEAT_S`` seconds the elapsed time and the log's latest line (the step's own progress).
    Returns its exit status and wall/CPU seconds."""
    log = log_dir / f"{index:02d}_{step.name.replace(' ', '_').replace('(', '').replace(')', '')}.log"
    command = step.command()
    result = StepResult(step.name, step.display(), step.artefact, log=str(log))
    cpu_before, start = _children_cpu_s(), time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        if verbose:
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, encoding="utf-8", errors="replace", env=step_environment(threads))
            for line in process.stdout:  # type: ignore[union-attr]
                handle.write(line)
                sys.stdout.write(f"    {line}")
            returncode = process.wait()
        else:
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                       env=step_environment(threads))
            next_beat = start + HEARTBEAT_S
            while True:
                try:
                    returncode = process.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    if heartbeat is not None and time.perf_counter() >= next_beat:
                        heartbeat(f"{time.perf_counter() - start:5.0f} s  {last_log_line(log)[:100]}")
                        next_beat += HEARTBEAT_S
    result.returncode = returncode
    result.outputs_present = sum(path.exists() for path in step.outputs)
    result.outputs_expected = len(step.outputs)
    result.wall_s = time.perf_counter() - start
    result.cpu_s = _children_cpu_s() - cpu_before
    return result


def log_tail(path: str | Path, lines: int = 12) -> str:
    """The last ``lines`` lines of a log (progress-bar carriage returns folded)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    kept = [line.rsplit("\r", 1)[-1] for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def prepare_out_dir(root: Path, overwrite: bool) -> None:
    """Create ``root``; refuse a folder holding an earlier run unless ``overwrite`` (which removes only
    the demo's own entries)."""
    prepare_output_dir(root, "demo output folder (--out)")
    existing = [root / name for name in DEMO_ENTRIES if (root / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{root}: holds an earlier demo run ({existing[0].name}, ...); "
                              "use --overwrite or another --out")
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def run_pipeline(config: DemoConfig, root: Path, gpu_ids: str = "-1", overwrite: bool = False,
                 verbose: bool = False, echo: bool = True, threads: int | None = 1) -> PipelineRun:
    """Run every step in order into ``root``; a step whose inputs are missing (an earlier step failed)
    is skipped, with the reason in its log line."""
    paths = DemoPaths(root.resolve())
    prepare_out_dir(paths.root, overwrite)
    paths.logs.mkdir(parents=True, exist_ok=True)
    run = PipelineRun(config, paths, gpu_ids)
    steps = build_steps(config, paths, gpu_ids)
    for index, step in enumerate(steps, start=1):
        if echo:
            print(f"[{index:2d}/{len(steps)}] {step.name:<26} ", end="", flush=True)
        missing = [path for path in step.inputs if not path.exists()]
        if missing:
            result = StepResult(step.name, step.display(), step.artefact,
                                log=f"skipped: {missing[0]} is missing")
            run.steps.append(result)
            if echo:
                print(f"skipped      ({result.log})", flush=True)
            continue
        beats: list[str] = []

        # heartbeat is only called by run_step within this iteration, so ``beats`` is this step's list
        def heartbeat(line: str) -> None:
            print(("\n" if not beats else "") + f"      ... {line}", flush=True)  # noqa: B023
            beats.append(line)  # noqa: B023

        result = run_step(step, paths.logs, index, verbose, threads, heartbeat if echo else None)
        run.steps.append(result)
        if echo:
            if beats:  # the heartbeat lines broke the step's line: name the step again
                print(f"[{index:2d}/{len(steps)}] {step.name:<26} ", end="")
            print(f"{result.status:<12} {result.wall_s:7.1f} s  -> {step.artefact}", flush=True)
            if result.status != "ok":
                print(f"    log: {result.log}\n"
                      + "\n".join(f"    | {line}" for line in log_tail(result.log).splitlines()))
    return run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cpu, cuda (the first GPU) or auto: cuda when available (default)")
    parser.add_argument("--quick", action="store_true",
                        help=f"4 cases and a shorter training ({QUICK_DURATION}): checks that everything runs; "
                             "the test suite runs it")
    parser.add_argument("--cases", type=int, default=None, help="phantom cases, T10-L5 each (default 8, --quick 4)")
    parser.add_argument("--seed", type=int, default=None, help="cohort and training seed (default 1)")
    parser.add_argument("--gan_epochs", type=int, default=None,
                        help="train.py --n_epochs (default 300, --quick 120); decay epochs are a third of it")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per step (OMP/MKL_NUM_THREADS; 0: PyTorch's default; default 1). The demo's "
                             "small tensors run fastest on one thread; on a busy machine more threads are much slower")
    parser.add_argument("--compare", action="store_true",
                        help="also train AOT-GAN and the 3D SupCon-SENet grader and build the paper's comparison table")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier demo run in --out (removes only the demo's own files)")
    parser.add_argument("--verbose", action="store_true", help="also stream every step's output")
    return parser.parse_args(argv)


def impossible_settings(args: argparse.Namespace) -> str | None:
    """Why the demo settings cannot work (checked before any step runs), or ``None``."""
    if args.cases is not None and args.cases < MIN_CASES:
        return (f"--cases {args.cases}: the demo needs at least {MIN_CASES} cases (one each for the train, "
                "val and test splits)")
    if args.gan_epochs is not None and args.gan_epochs < 1:
        return f"--gan_epochs {args.gan_epochs}: must be >= 1"
    if args.threads < 0:
        return f"--threads {args.threads}: must be >= 0"
    return None


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The preset (--quick or full) with the command-line overrides applied."""
    config = QUICK if args.quick else FULL
    if args.cases is not None:
        config = replace(config, cases=args.cases)
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    if args.gan_epochs is not None:
        config = replace(config, gan_epochs=args.gan_epochs, gan_epochs_decay=max(0, args.gan_epochs // 3))
    if getattr(args, "compare", False):
        config = replace(config, compare=True)
    return config


def gpu_ids_for(device: str) -> str:
    """``--gpu_ids`` value of the pipeline scripts for ``--device``."""
    if device == "cpu":
        return "-1"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    return "0" if torch.cuda.is_available() else "-1"


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 when every step succeeded and the report was written."""
    args = parse_args(argv)
    problem = impossible_settings(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    config = config_from_args(args)
    try:
        gpu_ids = gpu_ids_for(args.device)
        print(f"HealthiVert demo{' (--quick)' if args.quick else ''}: {config.cases} phantom cases "
              f"({config.vertebrae}), crops {'x'.join(map(str, config.crop_size))} at {config.spacing_mm:g} mm, "
              f"{'GPU' if gpu_ids != '-1' else 'CPU'}; output in {args.out.resolve()}")
        run = run_pipeline(config, args.out, gpu_ids, args.overwrite, args.verbose, threads=args.threads)
    except (FileExistsError, OutputDirError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from util.report import demo_summary, load_report_data, summary_text, write_report

    started = time.perf_counter()
    data = load_report_data(run)
    summary = demo_summary(run, data)
    summary["machine"] = (f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPUs, "
                          f"Python {platform.python_version()}")
    summary["config"] = asdict(config)
    report_path = write_report(run, summary, data)
    summary["report_s"] = round(time.perf_counter() - started, 2)
    write_json(run.paths.summary_json, summary)
    print(summary_text(run, summary, report_path))
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())
