"""Dataset throughput: masked-slice samples per second, cached (this project) vs. decode-per-sample (reference).

    python benchmarks/bench_dataset.py [--dataroot DIR/straightened --split_json F] [--samples 400] [--repeats 5]

Without ``--dataroot`` it writes a synthetic cohort of 256 x 256 x 64 crops (noisy CT, labels,
float32 attention maps) to a temporary folder. It times, in the same run:

- ``reference-style``: per sample, decode the CT, label and attention NIfTI (gzip) as float64
  with nibabel ``get_fdata`` (what the published dataset does) and build the masked slice;
- ``cached, 1 worker``: ``AlignedDataset.__getitem__`` in one process (memory-mapped crop cache);
- ``cached, DataLoader 0 workers``: the training ``DataLoader`` loading and collating batches in the
  main process;
- ``cached, DataLoader N workers``: the training ``DataLoader`` with ``--num_threads`` worker processes
  (batches travel through shared memory).

The main process uses one intra-op thread, like DataLoader workers do (on a busy machine, multi-threaded
collation of small tensors is much slower than single-threaded).

Prints a table with the median of ``--repeats`` runs and the speed-up over the reference style.
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

import nibabel as nib
import numpy as np
import torch

from data.aligned_dataset import AlignedDataset
from data.crops import crop_affine, crop_paths, write_crop
from data.image_io import save_nifti, window_hu
from data.labels import split_key
from data.loader import create_dataset
from data.masking import make_masked_slice, plane_slab
from util.fileio import write_json


def write_benchmark_cohort(root: Path, cases: int, crop_size: tuple[int, int, int],
                           seed: int = 0) -> tuple[Path, Path, Path]:
    """Synthetic crops (box bodies, 40 HU noise) + attention maps + split; returns (dataroot, split, cam_dir)."""
    rng = np.random.default_rng(seed)
    dataroot, cam_dir = root / "straightened", root / "heatmap"
    rows, cols, slices = crop_size
    labels = list(range(18, 24))
    split: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    affine = crop_affine(1.0, np.zeros(3), crop_size)
    for case_index in range(cases):
        case = f"bench{case_index:03d}"
        for target in labels:
            ct = rng.normal(0, 40, crop_size).astype(np.float32)
            label_map = np.zeros(crop_size, dtype=np.uint8)
            for _offset, lab in enumerate(labels):
                top = rows // 2 - 13 + (lab - target) * 32
                if -26 < top < rows:
                    body = (slice(max(top, 0), max(top + 26, 0)), slice(cols // 2 - 20, cols // 2 + 20),
                            slice(slices // 2 - 18, slices // 2 + 18))
                    label_map[body] = lab
                    ct[body] += 300.0
            key = split_key(case, target)
            write_crop(dataroot, key, ct, label_map, affine, {"crop_size": list(crop_size), "label": target})
            cam = np.clip(rng.normal(0.3, 0.1, crop_size), 0, 1).astype(np.float32)
            save_nifti(cam, affine, cam_dir / f"{key}.nii.gz")
            split["train"][key] = 0
    write_json(root / "vertebra_data.json", split)
    return dataroot, root / "vertebra_data.json", cam_dir


def reference_style_sample(dataset: AlignedDataset, index: int, rng: np.random.Generator) -> None:
    """Decode three gzip NIfTI volumes as float64 and build one masked slice (the published data path)."""
    entry = dataset.entries[index]
    paths = crop_paths(dataset.opt.dataroot, entry.key)
    ct = nib.load(str(paths.ct)).get_fdata()
    label = nib.load(str(paths.label)).get_fdata()
    cam_path = Path(dataset.opt.cam_dir) / f"{entry.key}.nii.gz"
    cam = nib.load(str(cam_path)).get_fdata() if cam_path.is_file() else None
    z = int(rng.choice(entry.candidates, p=entry.probabilities))
    ct_slice = window_hu(plane_slab(ct, dataset.plane)[z], dataset.window)
    cam_slice = None if cam is None else plane_slab(cam, dataset.plane)[z]
    make_masked_slice(ct_slice, plane_slab(label, dataset.plane)[z].astype(np.uint8), entry.label, cam_slice,
                      dataset.mask_height_px, neighbour_labels=dataset.neighbours.get(entry.case, set()))


def loader_runner(opt: argparse.Namespace):
    """A function loading ``count`` samples through the training DataLoader (workers started once)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = create_dataset(opt, show_progress=False)
    epochs = iter(range(10**9))

    def run(count: int) -> None:
        seen = 0
        while seen < count:
            loader.set_epoch(next(epochs))
            for batch in loader:
                seen += len(batch["key"])
                if seen >= count:
                    break

    run(opt.batch_size)  # start the workers
    return run


def samples_per_second(run, count: int) -> float:
    start = time.perf_counter()
    run(count)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", default=None, help="straightened crops (default: a synthetic cohort)")
    parser.add_argument("--split_json", default=None, help="split JSON (with --dataroot)")
    parser.add_argument("--cam_dir", default=None, help="attention maps (with --dataroot)")
    parser.add_argument("--cases", type=int, default=2, help="synthetic cases (6 vertebrae each)")
    parser.add_argument("--crop_size", type=int, nargs=3, default=[256, 256, 64], help="synthetic crop size")
    parser.add_argument("--plane", default="sagittal", choices=["sagittal", "coronal"], help="slice plane")
    parser.add_argument("--samples", type=int, default=400, help="samples per timed run (cached paths)")
    parser.add_argument("--reference_samples", type=int, default=12, help="samples per timed run (reference style)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument("--num_threads", type=int, default=2, help="DataLoader workers for the loader row")
    parser.add_argument("--batch_size", type=int, default=8, help="DataLoader batch size")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        if args.dataroot:
            dataroot, split, cam_dir = Path(args.dataroot), args.split_json, args.cam_dir
        else:
            dataroot, split, cam_dir = write_benchmark_cohort(Path(tmp), args.cases, tuple(args.crop_size))
        opt = argparse.Namespace(dataroot=str(dataroot), split_json=split and str(split),
                                 cam_dir=cam_dir and str(cam_dir), phase="train", plane=args.plane,
                                 cache_dir=str(Path(tmp) / "cache"), seed=0,
                                 hu_window=[-300.0, 800.0], mask_height=40.0, min_component_px=50,
                                 max_healthy_grade=1, batch_size=args.batch_size, num_threads=args.num_threads,
                                 gpu_ids=[], dataset_mode="aligned", serial_batches=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            dataset = AlignedDataset(opt, show_progress=False)
            build_s = time.perf_counter() - start
        n = len(dataset)
        rng = np.random.default_rng(0)
        counter = iter(range(10**9))

        def cached(count: int) -> None:
            for _ in range(count):
                i = next(counter)
                dataset[(i // n, i % n)]

        def reference(count: int) -> None:
            for i in range(count):
                reference_style_sample(dataset, i % n, rng)

        results = {
            "reference-style (3 x gzip NIfTI decode per sample)": [samples_per_second(reference, args.reference_samples)
                                                                  for _ in range(args.repeats)],
            "cached, 1 process (AlignedDataset[i])": [samples_per_second(cached, args.samples)
                                                      for _ in range(args.repeats)],
        }
        for workers in sorted({0, args.num_threads}):
            loader_run = loader_runner(argparse.Namespace(**{**vars(opt), "num_threads": workers}))
            results[f"cached, DataLoader {workers} workers, batch {args.batch_size}"] = [
                samples_per_second(loader_run, args.samples) for _ in range(args.repeats)]
    baseline = statistics.median(next(iter(results.values())))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"command: python benchmarks/bench_dataset.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"crops: {n} vertebrae, shape {dataset.crop_shape}, plane {args.plane}; cache build {build_s:.1f} s "
          f"(first use only)")
    print(f"| path | samples/s (median of {args.repeats}) | ms/sample | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {1000 / median:.2f} | {median / baseline:.0f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
