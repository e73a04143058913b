"""The demo run's model: its settings, where every artefact goes, and what each step did.

``DemoConfig`` holds the sizes and budgets (every field maps to a flag of one step script),
``DemoPaths`` the output layout under ``<out>`` (the file contracts of docs/design.md, 'Pipeline'),
``Step`` one script invocation and ``StepResult`` / ``PipelineRun`` the outcome. The step list is
``pipeline.steps``, the subprocess runner ``pipeline.runner``; the report reads a ``PipelineRun``.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

CLASSIFIER_NAME = "classifier"
GAN_NAME = "healthivert"
AOT_NAME = "aotgan"
GRADER_NAME = "supcon_senet"
GENERATION_MIN_VOXELS_AT_1MM = 400  # docs/design.md, 'Generation metrics': slices with > 400 target voxels at 1 mm


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and budgets of one demo run (every field maps to a flag of one pipeline script).

    crop_size: straightened crop shape (S->I, A->P, R->L voxels); spacing_mm: isotropic crop voxel size.
    classifier_*: Attention/train_classifier.py (a 40 mm view of the target and only the voxels within 4 mm of a
    vertebra, docs/design.md, 'Attention classifier'; view 0 and margin None: the published whole slices);
    cam_*: Attention/grad_CAM_3d_sagittal.py;
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
    classifier_epochs: int = 20
    classifier_epochs_decay: int = 20
    classifier_slices: int = 16
    classifier_slices_per_vertebra: int = 16
    classifier_view_mm: float = 40.0
    classifier_vertebra_margin_mm: float | None = 4.0
    cam_slices: int = 16
    cam_normalise: str = "volume"
    cam_windows: str = "vertebrae"
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
        """The 400-voxel slice threshold at 1 mm (docs/design.md, 'Generation metrics'), scaled to the
        crop's voxel area."""
        return max(1, round(GENERATION_MIN_VOXELS_AT_1MM / self.spacing_mm ** 2))


QUICK = DemoConfig(cases=4, classifier_epochs=1, classifier_epochs_decay=1, classifier_slices=8,
                   classifier_slices_per_vertebra=4, cam_slices=8, gan_epochs=120, gan_epochs_decay=40, svm_folds=3,
                   grader_epochs=4, grader_epochs_decay=2)
FULL = DemoConfig()


@dataclass(frozen=True)
class MethodOutputs:
    """Where one height-loss method's evaluation of the run lies: its RHLV table and grading folder."""

    method: str
    rhlv: Path
    grading: Path


@dataclass(frozen=True)
class DemoPaths:
    """Where every artefact of a demo run goes, under ``root``; ``name`` is the HealthiVert-GAN run
    (``train.py --name``: its checkpoint folder and ``R/<name>`` results folder)."""

    root: Path
    name: str = GAN_NAME

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
    def loss_log(self) -> Path:
        """The HealthiVert-GAN training loss log (``util.visualizer``)."""
        return self.checkpoints / self.name / "loss_log.csv"

    @property
    def results(self) -> Path:
        """``R/N``: synthesis outputs and every evaluation of them."""
        return self.root / "results" / self.name

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
    def methods(self) -> tuple[MethodOutputs, ...]:
        """The two height-loss references the report compares: the synthesis and the neighbour baseline."""
        return (MethodOutputs("HealthiVert-GAN", self.rhlv, self.grading),
                MethodOutputs("neighbour baseline", self.rhlv_neighbours, self.grading_neighbours))

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
