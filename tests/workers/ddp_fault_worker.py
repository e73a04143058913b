"""Run ``train.main`` with a ValueError forced on one rank (for the no-hang tests).

    FAIL_RANK=1 FAIL_AT=model python tests/workers/ddp_fault_worker.py <train.py flags>   # RANK etc. set by the test

FAIL_AT: ``model`` (building the model), ``save`` (writing a checkpoint; rank 0 only writes) or
``step`` (the first training step, inside DDP collectives).
"""

import os
import sys

import train
from models import training

FORCED = "forced failure on rank {rank}"


def fail(*_args, **_kwargs):
    raise ValueError(FORCED.format(rank=os.environ["RANK"]))


def main() -> int:
    if os.environ.get("RANK") == os.environ.get("FAIL_RANK"):
        where = os.environ.get("FAIL_AT", "model")
        if where == "model":
            training.create_model = fail
        elif where == "save":
            training.save_checkpoint = fail
        elif where == "step":
            from models.healthivert_model import HealthiVertModel

            HealthiVertModel.optimize_parameters = fail
    return train.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
