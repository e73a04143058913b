"""Options shared by training and testing (pix2pix style).

Parsing happens in three passes so that ``--help`` lists every flag: the base flags, then the flags
of the model chosen by ``--model`` (``models.get_option_setter``), then those of the dataset chosen
by ``--dataset_mode`` (``data.loader.get_option_setter``). A flag defined by an earlier pass is kept (the
model and dataset setters skip flags that already exist). The parsed options are printed and saved
as ``<checkpoints_dir>/<name>/[<phase>_]opt.txt`` and ``.json`` (rank 0 only).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import models
from data import loader as dataset_loader
from data.aligned_dataset import AlignedDatasetSettings
from data.planes import PLANES
from models.base_model import ModelRunSettings
from models.compilation import add_compile_option
from util import published_layout
from util.distributed import launch_environment, parse_gpu_ids
from util.fileio import atomic_write, write_json
from util.protocol import add_protocol_argument
from util.settings import options_to_dict


def add_protocol_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--protocol healthivert|reference`` (``util.protocol``) unless already defined."""
    if "--protocol" not in parser._option_string_actions:
        add_protocol_argument(parser, "41-row inference mask, neighbours synthesized in place, uint8 truncation "
                                      "between steps, L1 divided by the batch size")
    return parser


def non_negative_float_or_inf(text: str) -> float:
    """argparse type: a non-negative number or ``inf``."""
    value = float(text)
    if value < 0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a non-negative number or inf")
    return value


class BaseOptions:
    """Flags shared by train.py and the test/synthesis scripts."""

    isTrain = False
    file_prefix = ""

    def __init__(self) -> None:
        self.parser: argparse.ArgumentParser | None = None

    def initialize(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Base flags (data, experiment, device, reproducibility)."""
        parser.add_argument("--dataroot", required=True,
                            help="folder of straightened crops (holds CT/ and label/; "
                                 "docs/design.md, 'Straightened crops')")
        parser.add_argument("--split_json", default=None,
                            help="split JSON {train,val,test: {<case>_<v>: grade}}; "
                                 "if omitted, <dataroot>/../vertebra_data.json")
        parser.add_argument("--cam_dir", default=None,
                            help="folder of attention maps <key>.nii.gz (must exist; a vertebra without a map gets "
                                 "all-zero attention, one warning; if omitted: ./Attention/heatmap when --dataroot is "
                                 "./dataset/straightened and that folder exists (the published layout), else no "
                                 "attention)")
        parser.add_argument("--name", default=published_layout.EXPERIMENT_NAME,
                            help="experiment name; checkpoints and logs go to <checkpoints_dir>/<name>")
        parser.add_argument("--checkpoints_dir", default="./checkpoints", help="where experiments are stored")
        parser.add_argument("--gpu_ids", default="auto",
                            help="auto: one GPU per process (cuda:LOCAL_RANK under torchrun) when CUDA is available, "
                                 "else the CPU; -1: CPU; 0 or 0,1: these GPUs, one per torchrun rank (an error if "
                                 "CUDA is missing or fewer GPUs than ranks are named)")
        parser.add_argument("--dist_timeout", type=float, default=240.0,
                            help="torchrun: minutes a rank may wait for the others (e.g. while rank 0 builds the "
                                 "crop cache) before the job is aborted")
        parser.add_argument("--model", default=models.ModelChoice.model, help="model to use (models.create_model)")
        parser.add_argument("--dataset_mode", default="aligned", help="dataset to use (data/<mode>_dataset.py)")
        parser.add_argument("--plane", default="sagittal", choices=list(PLANES),
                            help="slice plane: sagittal slices [:, :, z] or coronal slices [:, y, :]")
        parser.add_argument("--batch_size", type=int, default=1, help="input batch size (per process under torchrun)")
        parser.add_argument("--num_threads", type=int, default=4,
                            help="DataLoader worker processes (0: load in the main process)")
        parser.add_argument("--serial_batches", action="store_true",
                            help="take vertebrae in order instead of shuffling")
        parser.add_argument("--max_dataset_size", type=non_negative_float_or_inf,
                            default=AlignedDatasetSettings.max_dataset_size,
                            help="use at most this many vertebrae (sorted by key)")
        parser.add_argument("--cache_dir", default=None,
                            help="decoded-crop cache folder, rebuilt when a crop changes; "
                                 "if omitted, <dataroot>/.cache/crops")
        parser.add_argument("--epoch", default=ModelRunSettings.epoch,
                            help="checkpoint to load: 'latest' or an epoch number "
                                 "(<checkpoints_dir>/<name>/<epoch>.pth)")
        parser.add_argument("--load_iter", type=int, default=ModelRunSettings.load_iter,
                            help="if > 0, load the checkpoint saved at this iteration (iter_<n>.pth) "
                                 "instead of --epoch")
        parser.add_argument("--seed", type=int, default=dataset_loader.LoaderSettings.seed,
                            help="random seed (Python, NumPy, PyTorch, data sampling)")
        parser.add_argument("--deterministic", action="store_true",
                            help="bitwise repeatable kernels on one device (slower)")
        parser.add_argument("--verbose", action="store_true", help="print network sizes and more")
        add_compile_option(parser)
        add_protocol_option(parser)
        parser.add_argument("--direction", default="BtoA",
                            help="pix2pix direction; only BtoA (masked slice -> healthy slice) exists here, accepted "
                                 "for the published command lines")
        parser.add_argument("--suffix", default="", help="appended to --name, formatted with the options, e.g. {plane}")
        return parser

    def build_parser(self, argv: list[str] | None) -> argparse.ArgumentParser:
        """Parser with the base, model and dataset flags (model and dataset chosen from ``argv``)."""
        parser = argparse.ArgumentParser(
            description="HealthiVert-GAN " + ("training" if self.isTrain else "testing") + " options",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter, add_help=False,
            usage="%(prog)s --dataroot DIR [options]  (--help lists every flag)")
        parser = self.initialize(parser)
        known, _ = parser.parse_known_args(argv)
        parser = models.get_option_setter(known.model)(parser, self.isTrain)
        known, _ = parser.parse_known_args(argv)
        parser = dataset_loader.get_option_setter(known.dataset_mode)(parser, self.isTrain)
        parser.add_argument("-h", "--help", action="help", help="show this help message (every flag) and exit")
        return parser

    def gather_options(self, argv: list[str] | None = None) -> argparse.Namespace:
        """Parse ``argv`` (default ``sys.argv[1:]``) with every flag."""
        argv = sys.argv[1:] if argv is None else list(argv)
        if any(arg in ("-h", "--help") for arg in argv):
            # --help must not fail on the required --dataroot before all flags are known.
            argv = argv + (["--dataroot", "."] if "--dataroot" not in argv else [])
        self.parser = self.build_parser(argv)
        return self.parser.parse_args(argv)

    def format_options(self, opt: argparse.Namespace) -> str:
        """Readable listing of the options, marking values that differ from the defaults."""
        lines = ["----------------- Options ---------------"]
        for key, value in sorted(vars(opt).items()):
            default = self.parser.get_default(key) if self.parser else None
            comment = f"\t[default: {default}]" if default is not None and value != default else ""
            lines.append(f"{key:>25}: {value!s:<30}{comment}")
        lines.append("----------------- End -------------------")
        return "\n".join(lines)

    def save_options(self, opt: argparse.Namespace) -> None:
        """Print the options and save them as text and JSON beside the checkpoints."""
        text = self.format_options(opt)
        print(text)
        folder = Path(opt.checkpoints_dir) / opt.name
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / f"{self.file_prefix}opt.txt", encoding="utf-8") as handle:
            handle.write(text + "\n")
        write_json(folder / f"{self.file_prefix}opt.json", options_to_dict(opt))

    def validate(self, opt: argparse.Namespace) -> None:
        """Reject impossible flag values with ``self.parser.error`` (subclasses add their checks)."""

    def parse(self, argv: list[str] | None = None, save: bool = True) -> argparse.Namespace:
        """Parse, post-process (suffix, GPU ids) and, on rank 0, print and save the options."""
        opt = self.gather_options(argv)
        opt.isTrain = self.isTrain
        if opt.suffix:
            opt.name = f"{opt.name}_{opt.suffix.format(**vars(opt))}"
        try:
            opt.gpu_ids = parse_gpu_ids(opt.gpu_ids)
        except ValueError as err:
            self.parser.error(str(err))
        opt.hu_window = [float(v) for v in opt.hu_window] if hasattr(opt, "hu_window") else None
        if opt.direction != "BtoA":
            raise SystemExit(f"error: --direction {opt.direction}: only BtoA exists (the generator maps the masked "
                             "slice to the healthy slice)")
        if opt.batch_size < 1:
            self.parser.error(f"--batch_size must be >= 1, got {opt.batch_size}")
        if opt.num_threads < 0:
            self.parser.error(f"--num_threads must be >= 0, got {opt.num_threads}")
        if opt.cam_dir is None and published_layout.cam_dir_for(opt.dataroot) is not None:
            opt.cam_dir = str(published_layout.CAM_DIR)
            if launch_environment().rank == 0:
                print(f"note: attention maps from {opt.cam_dir} (published layout; --cam_dir chooses another)",
                      file=sys.stderr)
        if opt.cam_dir and not Path(opt.cam_dir).is_dir():
            self.parser.error(f"--cam_dir {opt.cam_dir}: folder not found "
                              "(leave the flag out to run without attention)")
        self.validate(opt)
        if save and launch_environment().rank == 0:
            self.save_options(opt)
        return opt
