"""Run the trainer (``models.training.Trainer``) under torchrun and save each rank's final weights (DDP test).

    python -m torch.distributed.run --nproc_per_node 2 tests/workers/ddp_train_worker.py OUT_DIR <train.py flags>
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from models.training import Trainer
from options.train_options import TrainOptions
from util.device import seed_everything
from util.distributed import setup_distributed, teardown_distributed


def main() -> int:
    out = Path(sys.argv[1])
    opt = TrainOptions().parse(sys.argv[2:])
    context = setup_distributed(opt.gpu_ids, timeout_min=opt.dist_timeout)
    seed_everything(opt.seed + context.rank, opt.deterministic)
    trainer = Trainer(opt, context)
    trainer.run()
    nets = {name: getattr(trainer.model, "net" + name).module.state_dict()
            for name in trainer.model.model_names}
    torch.save({"nets": nets, "world_size": dist.get_world_size()}, out / f"rank{context.rank}.pt")
    teardown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
