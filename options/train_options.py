"""Training options: the training loop, logging, checkpoints and validation (pix2pix names)."""

from __future__ import annotations

import argparse

from models.base_model import add_schedule_options
from options.base_options import BaseOptions
from util.visualizer import VisualizerSettings


class TrainOptions(BaseOptions):
    """Flags of train.py (base flags + these + the model's and dataset's)."""

    isTrain = True

    def initialize(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser = BaseOptions.initialize(self, parser)
        parser.add_argument("--phase", default="train", help="split trained on (docs/design.md, 'Split JSON')")
        add_schedule_options(parser)  # pix2pix: constant LR for n_epochs, then linear decay over n_epochs_decay
        parser.add_argument("--cudnn_benchmark", action=argparse.BooleanOptionalAction, default=True,
                            help="let cuDNN pick the fastest convolution kernels for the fixed crop size "
                                 "(GPU; off with --deterministic)")
        parser.add_argument("--max_steps", type=int, default=0,
                            help="stop after this many iterations in total, saving latest.pth (0: no limit); "
                                 "for smoke tests and benchmarks")
        # checkpoints
        parser.add_argument("--continue_train", action="store_true",
                            help="resume from <checkpoints_dir>/<name>/<--epoch>.pth exactly where it stopped")
        parser.add_argument("--save_latest_freq", type=int, default=5000,
                            help="save latest.pth every this many iterations")
        parser.add_argument("--save_epoch_freq", type=int, default=5,
                            help="save <epoch>.pth (and latest.pth) at the end of every this many epochs")
        parser.add_argument("--save_by_iter", action="store_true",
                            help="also keep iter_<n>.pth at every --save_latest_freq")
        # logging
        parser.add_argument("--print_freq", type=int, default=100, help="log losses every this many iterations")
        parser.add_argument("--display_freq", type=int, default=400,
                            help="save sample visuals (HTML, TensorBoard) every this many iterations")
        parser.add_argument("--display_ncols", type=int, default=VisualizerSettings.display_ncols,
                            help="images per row on the HTML page and visdom")
        parser.add_argument("--no_html", action="store_true", help="do not write <checkpoints_dir>/<name>/web/")
        parser.add_argument("--no_tensorboard", action="store_true", help="do not write TensorBoard events")
        parser.add_argument("--use_visdom", action="store_true",
                            help="also show visuals and losses in visdom (if installed)")
        parser.add_argument("--display_server", default=VisualizerSettings.display_server, help="visdom server")
        parser.add_argument("--display_port", type=int, default=VisualizerSettings.display_port, help="visdom port")
        parser.add_argument("--display_env", default=VisualizerSettings.display_env, help="visdom environment")
        parser.add_argument("--no_progress", action="store_true", help="no progress bar")
        # validation
        parser.add_argument("--val_freq", type=int, default=5,
                            help="validate on the healthy val vertebrae every this many epochs (0: never)")
        parser.add_argument("--val_phase", default="val", help="split used for validation")
        return parser

    def validate(self, opt: argparse.Namespace) -> None:
        """Frequencies >= 1, counts >= 0 (a zero frequency would divide by zero in the loop)."""
        at_least = {"print_freq": 1, "save_latest_freq": 1, "save_epoch_freq": 1, "display_freq": 1,
                    "display_ncols": 1, "max_steps": 0, "val_freq": 0, "n_epochs": 0, "n_epochs_decay": 0,
                    "epoch_count": 1, "lr_decay_iters": 1}
        for key, minimum in at_least.items():
            value = getattr(opt, key, None)
            if value is not None and value < minimum:
                self.parser.error(f"--{key} must be >= {minimum}, got {value}")
        if opt.n_epochs + opt.n_epochs_decay < 1:
            self.parser.error("--n_epochs + --n_epochs_decay must be >= 1")
