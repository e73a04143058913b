"""Iterative two-stage synthesis of pseudo-healthy vertebrae for a folder of straightened crops
(docs/design.md, 'Iterative synthesis').

    python eval_3d_sagittal_twostage.py --dataroot DIR/straightened --cam_dir DIR/heatmap --name N --results_dir R
    python eval_3d_sagittal_twostage.py ... --plane both --name_coronal NC     # + coronal and fused 2.5D volumes
    torchrun --nproc_per_node 2 eval_3d_sagittal_twostage.py ...              # vertebrae sharded, one GPU per rank

For each vertebra (``--split val,test`` restricts them to splits of ``--split_json``) the upper
neighbour, then the lower neighbour, then the target are synthesized on the central 4/5 of the
target's slices, each step batched over the slices (``models.synthesis``); ``--no_iterative``
synthesizes the target only. Outputs on the
crop grid: ``R/N/CT_fake/<case>_<v>.nii.gz`` (int16 HU) and ``R/N/label_fake/<case>_<v>.nii.gz``
(uint8 VerSe ids); with ``--plane both`` also ``R/N/coronal/`` and the 2.5D fusion in ``R/N/fused/``.
``--output_dir O`` writes to ``O/`` instead of ``R/N/``.

Without flags it runs on the published README's layout: ``--dataroot ./dataset/straightened``, the
attention maps of ``./Attention/heatmap`` when that folder exists, the model
``./checkpoints/HealthiVert_experiment`` (what the published training command writes) and outputs in
``./output/{CT_fake,label_fake}/``. The rule: ``--output_dir`` defaults to ``./output`` when none of
``--results_dir``, ``--name`` and ``--output_dir`` is given, else to ``<results_dir>/<name>``
(``--results_dir`` default ``./results/``, ``--name`` default ``HealthiVert_experiment``).
Each output has a provenance record ``R/N/provenance/<key>.json`` (SHA-256 of the checkpoint(s),
plane, autocast, ``--cam_dir``, size and mtime of the input crop and map). A vertebra is skipped when
its outputs exist and their record matches this run; when they came from another checkpoint, options
or input it is re-synthesized and counted in the summary. ``--overwrite`` recomputes every vertebra.
A summary (also ``R/N/synthesis_summary.json``) lists failures; exit status 0 when every vertebra
succeeded, 1 when some failed, 2 on a setup error (bad flag, checkpoint, unwritable ``--results_dir``),
always with a one-line reason.
"""

from __future__ import annotations

import argparse
import sys

from data.image_io import ImageIOError
from models.module_switches import add_synthesis_switch
from models.synthesis.dataset import synthesize_dataset
from models.synthesis.outputs import PLANE_MODES
from models.synthesis.runner import CPU_BATCH_SIZE
from options.test_options import TestOptions
from util import published_layout
from util.distributed import RankFailure, setup_distributed, teardown_distributed

DEFAULT_RESULTS_DIR = "./results/"


class SynthesisOptions(TestOptions):
    """Test options plus the synthesis flags; ``--plane`` also accepts ``both``."""

    def initialize(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser = TestOptions.initialize(self, parser)
        dataroot = parser._option_string_actions["--dataroot"]
        dataroot.required, dataroot.default = False, f"./{published_layout.DATAROOT}"
        name, results_dir = parser._option_string_actions["--name"], parser._option_string_actions["--results_dir"]
        name.default, results_dir.default = None, None
        name.help = (f"experiment name of the model in <checkpoints_dir>/<name> (default "
                     f"{published_layout.EXPERIMENT_NAME}, the published training command's)")
        results_dir.help = f"results go to <results_dir>/<name>/ (default {DEFAULT_RESULTS_DIR})"
        parser.add_argument("--output_dir", default=None,
                            help="folder receiving CT_fake/ and label_fake/ (default: <results_dir>/<name> when "
                                 f"--results_dir or --name is given, else ./{published_layout.OUTPUT_DIR}, the "
                                 "published layout)")
        plane = parser._option_string_actions["--plane"]
        plane.choices = list(PLANE_MODES)
        plane.help = ("sagittal or coronal: synthesize with that plane's model (--name); both: sagittal (--name), "
                      "coronal (--name_coronal) and their 2.5D fusion")
        parser.add_argument("--name_coronal", default=None,
                            help="checkpoint name of the coronal model (with --plane both)")
        parser.add_argument("--split", default="all",
                            help="vertebrae to synthesize: all crops, or comma-separated splits of --split_json, "
                                 "e.g. val,test (--phase is not used here)")
        parser.add_argument("--overwrite", action="store_true",
                            help="recompute every vertebra, even those whose outputs match this run's checkpoint "
                                 "and inputs")
        parser.add_argument("--synthesis_batch_size", type=int, default=-1,
                            help="slices per generator call within each step: 0 = all slices of the vertebra at once, "
                                 f"-1 = automatic (all on GPU, {CPU_BATCH_SIZE} on CPU)")
        parser.add_argument("--cpu_bf16", action="store_true",
                            help="bfloat16 autocast on CPU (faster on CPUs with AVX512-BF16/AMX; "
                                 "results differ slightly)")
        parser.add_argument("--no_progress", action="store_true", help="no progress bar")
        add_synthesis_switch(parser)
        return parser

    def gather_options(self, argv: list[str] | None = None) -> argparse.Namespace:
        """Parse, then resolve the defaults of ``--name``, ``--results_dir`` and ``--output_dir`` (module docstring)."""
        opt = TestOptions.gather_options(self, argv)
        if opt.output_dir is None and opt.name is None and opt.results_dir is None:
            opt.output_dir = f"./{published_layout.OUTPUT_DIR}"
        opt.name = opt.name or published_layout.EXPERIMENT_NAME
        opt.results_dir = opt.results_dir or DEFAULT_RESULTS_DIR
        return opt


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the synthesis command line (TestOptions + synthesis flags); options are not saved."""
    return SynthesisOptions().parse(argv, save=False)


def main(argv: list[str] | None = None) -> int:
    """Run the synthesis; 0 when every vertebra succeeded, 1 when some failed, 2 on a setup error."""
    opt = parse_options(argv)
    try:
        # ranks only exchange their summaries: a Gloo group, no NCCL (and no NCCL watchdog)
        context = setup_distributed(opt.gpu_ids, device_collectives=False, timeout_min=opt.dist_timeout)
        summary = synthesize_dataset(opt, show_progress=not opt.no_progress)
    except (FileNotFoundError, ValueError, ImageIOError, RankFailure) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        teardown_distributed()
    if context.is_main:
        print(summary.report())
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
