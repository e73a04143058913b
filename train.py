"""Train HealthiVert-GAN on masked 2.5D slices of straightened vertebra crops (pix2pix training loop).

    python train.py --dataroot DIR/straightened --split_json DIR/vertebra_data.json --name demo
    python train.py ... --continue_train                      # resume exactly where it stopped
    torchrun --standalone --nproc_per_node 2 train.py ...     # DDP, one GPU per rank (NCCL / Gloo)

Every epoch draws one slice per healthy ``train`` vertebra; the learning rate is constant for
``--n_epochs`` and decays linearly to zero over ``--n_epochs_decay``. Checkpoints
(``<checkpoints_dir>/<name>/latest.pth``, ``<epoch>.pth``; see ``util/checkpoint.py``) hold the
networks, optimizers, schedulers, AMP scalers, progress, per-rank RNG states and options, all on the
CPU. Logs: ``loss_log.csv``, ``val_log.csv``, ``tensorboard/``, ``web/index.html``. Validation on the
healthy ``val`` vertebrae reports L1 and PSNR of the band, Dice of the target segmentation and the height error in mm.
The loop, resume and validation are ``models.training``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from data.image_io import ImageIOError
from models.training import Trainer
from options.train_options import TrainOptions
from util.device import seed_everything
from util.distributed import RankFailure, all_ranks_succeed, setup_distributed, teardown_distributed
from util.fileio import prepare_output_dir


def main(argv: list[str] | None = None) -> int:
    """Parse the options, train, and return the exit status (non-zero with a one-line reason on bad input)."""
    options = TrainOptions()
    opt = options.parse(argv, save=False)
    try:
        context = setup_distributed(opt.gpu_ids, timeout_min=opt.dist_timeout)
        with all_ranks_succeed():
            if context.is_main:
                prepare_output_dir(Path(opt.checkpoints_dir) / opt.name,
                                   "checkpoint folder (--checkpoints_dir/--name)", recursive=True)  # web/images/ too
        seed_everything(opt.seed + context.rank, opt.deterministic)
        torch.backends.cudnn.benchmark = opt.cudnn_benchmark and not opt.deterministic
        trainer = Trainer(opt, context)
        if context.is_main:  # the options files describe a run that really started
            options.save_options(opt)
        trainer.run()
    except (ValueError, FileNotFoundError, ImageIOError, KeyError, RankFailure) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 1
    finally:
        teardown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
