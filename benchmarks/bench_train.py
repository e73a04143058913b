"""Training throughput: HealthiVert-GAN iterations per second at batch 8, 256 x 256, with and without data loading.

    python benchmarks/bench_train.py [--batch_size 8] [--iters 3] [--repeats 3] [--gpu_ids -1]

Writes a synthetic cohort of 256 x 256 x 64 crops (``bench_dataset.write_benchmark_cohort``), then times
in the same run (median of ``--repeats`` runs of ``--iters`` iterations, after one warm-up iteration):

- ``step only``: ``model.optimize_parameters()`` on one fixed batch (generator + 3 PatchGANs);
- ``train loop``: the DataLoader (``--num_threads`` workers) + ``set_input`` + ``optimize_parameters``,
  i.e. what train.py does; the data-wait share shows whether loading ever stalls training.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks.bench_dataset import write_benchmark_cohort
from data.loader import create_dataset
from models import create_model
from options.train_options import TrainOptions
from util.device import seed_everything


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=8, help="batch size")
    parser.add_argument("--crop_size", type=int, nargs=3, default=[256, 256, 64], help="synthetic crop size")
    parser.add_argument("--iters", type=int, default=3, help="iterations per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    parser.add_argument("--num_threads", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--gpu_ids", default="-1", help="-1 for CPU, 0 for the first GPU")
    parser.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU; see --amp_dtype)")
    parser.add_argument("--amp_dtype", default="auto", choices=["auto", "bf16", "fp16"], help="--amp type")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        dataroot, split, cam_dir = write_benchmark_cohort(Path(tmp), 2, tuple(args.crop_size))
        flags = ["--dataroot", str(dataroot), "--split_json", str(split), "--cam_dir", str(cam_dir),
                 "--name", "bench", "--checkpoints_dir", str(Path(tmp) / "ck"), "--gpu_ids", args.gpu_ids,
                 "--batch_size", str(args.batch_size), "--num_threads", str(args.num_threads)]
        opt = TrainOptions().parse(flags + (["--amp", "--amp_dtype", args.amp_dtype] if args.amp else []), save=False)
        seed_everything(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loader = create_dataset(opt, show_progress=False)
            model = create_model(opt)
        model.setup(opt, load=False)
        device = model.device
        epochs = iter(range(10**9))

        def synchronize() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        fixed = next(iter(loader))
        model.set_input(fixed)
        model.optimize_parameters()  # warm-up

        def step_only() -> tuple[float, float]:
            synchronize()
            start = time.perf_counter()
            for _ in range(args.iters):
                model.optimize_parameters()
            synchronize()
            return args.iters / (time.perf_counter() - start), 0.0

        def train_loop() -> tuple[float, float]:
            done, waited = 0, 0.0
            synchronize()
            start = time.perf_counter()
            while done < args.iters:
                loader.set_epoch(next(epochs))
                fetch = time.perf_counter()
                for batch in loader:
                    waited += time.perf_counter() - fetch
                    model.set_input(batch)
                    model.optimize_parameters()
                    done += 1
                    if done >= args.iters:
                        break
                    fetch = time.perf_counter()
            synchronize()
            elapsed = time.perf_counter() - start
            return done / elapsed, waited / elapsed

        results = {"step only (fixed batch)": [step_only() for _ in range(args.repeats)],
                   f"train loop (DataLoader, {args.num_threads} workers)": [train_loop() for _ in range(args.repeats)]}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")
    print(f"command: python benchmarks/bench_train.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"batch {args.batch_size}, images {tuple(fixed['masked_ct'].shape[-2:])}, ngf {opt.ngf}, ndf {opt.ndf}")
    print(f"| path | it/s (median of {args.repeats}) | s/it | samples/s | data wait |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, values in results.items():
        rate = statistics.median(v[0] for v in values)
        wait = statistics.median(v[1] for v in values)
        print(f"| {name} | {rate:.3f} | {1 / rate:.2f} | {rate * args.batch_size:.2f} | {wait:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
