"""Training and validation of the fracture classifier (docs/design.md, 'Attention classifier'): options,
the loop, per-vertebra metrics.

Validation scores are per vertebra: the mean fracture probability over its slices. The AdamW +
linear-decay optimizer and its flags are shared with the 3D grader (``Attention/grader3d.py``).
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm import tqdm

from Attention.checkpoint import checkpoint_path, save_classifier, training_crop_geometry
from Attention.networks import ARCHS, FRACTURE_CLASS, build_classifier
from Attention.slices import (
    SliceDataset,
    SliceInput,
    VertebraSlices,
    load_vertebra_slices,
    loss_class_weights,
    random_shift,
    random_vertical_flip,
    sample_weights,
)
from data.crops import read_split, require_listed_crops
from data.image_io import DEFAULT_WINDOW_HU
from util import published_layout
from util.device import seed_everything
from util.distributed import resolve_device
from util.fileio import prepare_output_dir, write_json

LOGGER = logging.getLogger(__name__)

METRICS_FILE = "classifier_metrics.json"
LOG_FILE = "classifier_log.csv"


def classification_metrics(fractured: np.ndarray, probability: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Balanced accuracy, AUC (None with a single class) and confusion matrix [[TN, FP], [FN, TP]]."""
    truth = np.asarray(fractured, dtype=int)
    predicted = (np.asarray(probability) >= threshold).astype(int)
    auc = float(roc_auc_score(truth, probability)) if len(np.unique(truth)) == 2 else None
    with warnings.catch_warnings():  # a single-class truth is legitimate (BA = that class's recall)
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(truth, predicted)) if len(truth) else None
    return {
        "balanced_accuracy": balanced,
        "auc": auc,
        "confusion_matrix": confusion_matrix(truth, predicted, labels=[0, 1]).tolist(),
        "n_healthy": int((truth == 0).sum()),
        "n_fractured": int((truth == 1).sum()),
    }


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: torch.Tensor, device: torch.device,
                          batch_size: int) -> np.ndarray:
    """Fracture probability of each image of (N, 1, H, W), computed in batches."""
    model.eval()
    out = [
        torch.softmax(model(images[i:i + batch_size].to(device)), dim=1)[:, FRACTURE_CLASS].cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def evaluate(model: nn.Module, vertebrae: list[VertebraSlices], device: torch.device, batch_size: int,
             ) -> dict[str, Any]:
    """Vertebra-level metrics (mean slice probability per vertebra) plus slice-level balanced accuracy."""
    slice_prob, slice_truth, vertebra_prob = [], [], []
    for vert in vertebrae:
        prob = predict_probabilities(model, torch.from_numpy(vert.slices.astype(np.float32))[:, None], device,
                                     batch_size)
        slice_prob.append(prob)
        slice_truth.append(np.full(len(prob), int(vert.fractured)))
        vertebra_prob.append(float(prob.mean()))
    truth = np.array([int(v.fractured) for v in vertebrae])
    metrics = classification_metrics(truth, np.array(vertebra_prob))
    metrics["slice_balanced_accuracy"] = (
        classification_metrics(np.concatenate(slice_truth), np.concatenate(slice_prob))["balanced_accuracy"]
        if vertebrae else None
    )
    metrics["fracture_probability"] = {v.key: p for v, p in zip(vertebrae, vertebra_prob)}
    return metrics


def classifier_parser() -> argparse.ArgumentParser:
    """Command-line options of ``Attention/train_classifier.py``."""
    parser = argparse.ArgumentParser(
        description="Train the HGAM fracture classifier on sagittal slices of straightened crops "
                    "(fractured = Genant grade >= --fracture_grade). Writes <checkpoints_dir>/<name>/classifier.pth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dataroot", type=Path, default=published_layout.DATAROOT,
                        help="straightened crop folder (CT/, label/)")
    parser.add_argument("--split_json", type=Path, default=None,
                        help="split JSON {train,val,test: {<case>_<v>: grade}}; trains on train, reports on val "
                             "(default: <dataroot>/../vertebra_data.json, else ./vertebra_data.json)")
    parser.add_argument("--name", default=published_layout.CLASSIFIER_NAME,
                        help="experiment name (checkpoint folder); Attention/grad_CAM_3d_sagittal.py reads the "
                             "same default")
    parser.add_argument("--checkpoints_dir", type=Path, default=Path("checkpoints"), help="where models are saved")
    parser.add_argument("--arch", choices=ARCHS, default="seresnet50",
                        help="seresnet50: MONAI SE-ResNet-50 (2D) as in the paper, for a GPU; "
                             "small: a small SE-ResNet, use it on CPU")
    parser.add_argument("--fracture_grade", type=int, default=1, choices=(1, 2, 3),
                        help="a vertebra is fractured when its Genant grade is >= this")
    parser.add_argument("--n_slices", type=int, default=30,
                        help="central sagittal slices of each crop to train on (those with body voxels)")
    parser.add_argument("--min_body_px", type=int, default=50,
                        help="a slice is used when it holds at least this many voxels of the target body")
    parser.add_argument("--view_mm", type=float, default=0.0,
                        help="classify only the central rows of each slice spanning this many mm (the target "
                             "vertebra and its discs: a fractured neighbour then no longer makes the target's label "
                             "ambiguous, and the attention maps stay on the target); 0: whole slices, as published")
    parser.add_argument("--vertebra_margin_mm", type=float, default=None,
                        help="classify only the voxels within this many mm of a labelled vertebra (the rest set to "
                             "air): the classifier then answers from the vertebrae, not from ribs, organs and soft "
                             "tissue, and its attention maps stay on them; default: whole slices, as published")
    parser.add_argument("--hu_window", type=float, nargs=2, default=list(DEFAULT_WINDOW_HU), metavar=("LOW", "HIGH"),
                        help="HU window mapped to [-1, 1]")
    parser.add_argument("--balance", choices=("sampler", "loss"), default="sampler",
                        help="class balancing: weighted sampling of vertebrae, or class-weighted loss")
    parser.add_argument("--slices_per_vertebra", type=int, default=16,
                        help="slices drawn per training vertebra and epoch")
    parser.add_argument("--max_shift", type=int, default=4, help="random translation augmentation (pixels)")
    parser.add_argument("--no_vertical_flip", dest="vertical_flip", action="store_false",
                        help="disable the random superior-inferior flip augmentation")
    parser.add_argument("--n_epochs", type=int, default=10, help="epochs at the initial learning rate")
    parser.add_argument("--n_epochs_decay", type=int, default=10, help="epochs of linear decay to zero")
    parser.add_argument("--batch_size", type=int, default=16, help="slices per batch")
    add_optimizer_and_device_options(parser)
    return parser


def add_optimizer_and_device_options(parser: argparse.ArgumentParser,
                                     seed_help: str = "random seed") -> argparse.ArgumentParser:
    """AdamW (``--lr``, ``--beta1``, ``--weight_decay``), loader workers, device, seed and determinism flags of
    the attention-side training scripts (the slice classifier and the 3D grader)."""
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    parser.add_argument("--weight_decay", type=float, default=1e-4, help="AdamW weight decay")
    parser.add_argument("--num_threads", type=int, default=0, help="data loader workers")
    parser.add_argument("--gpu_ids", default="auto",
                        help="auto: the first GPU when CUDA is available, else the CPU; 0: that GPU; -1: CPU")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--deterministic", action="store_true", help="bitwise-repeatable kernels")
    return parser


def adamw_with_linear_decay(model: nn.Module, opt: argparse.Namespace) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW from ``opt`` and its schedule: constant for ``n_epochs``, then linear decay over ``n_epochs_decay``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999),
                                  weight_decay=opt.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(opt.n_epochs, opt.n_epochs_decay))


def parse_classifier_options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check ``train_classifier`` options."""
    parser = classifier_parser()
    opt = parser.parse_args(argv)
    for flag in ("n_slices", "batch_size", "slices_per_vertebra"):
        if getattr(opt, flag) < 1:
            parser.error(f"--{flag} must be >= 1")
    if opt.n_epochs + opt.n_epochs_decay < 1:
        parser.error("--n_epochs + --n_epochs_decay must be >= 1")
    if opt.view_mm < 0:
        parser.error("--view_mm must be >= 0")
    if opt.vertebra_margin_mm is not None and opt.vertebra_margin_mm < 0:
        parser.error("--vertebra_margin_mm must be >= 0")
    if opt.hu_window[1] <= opt.hu_window[0]:
        parser.error("--hu_window: HIGH must exceed LOW")
    if opt.split_json is None:
        beside = Path(opt.dataroot).resolve().parent / "vertebra_data.json"
        opt.split_json = beside if beside.is_file() else published_layout.split_json()
        if opt.split_json is None:
            parser.error(f"no split JSON at {beside} or ./vertebra_data.json; give --split_json FILE")
    return opt


def linear_decay(n_epochs: int, n_epochs_decay: int):
    """pix2pix schedule: factor 1 for ``n_epochs`` epochs, then linearly down towards 0."""
    def factor(epoch: int) -> float:
        return 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1)
    return factor


def _require_both_classes(vertebrae: list[VertebraSlices], split_json: Path, fracture_grade: int) -> None:
    counts = np.bincount([int(v.fractured) for v in vertebrae], minlength=2)
    if len(vertebrae) == 0:
        raise ValueError(f"{split_json}: no usable 'train' vertebra has a crop")
    if counts.min() == 0:
        raise ValueError(
            f"{split_json}: 'train' has {counts[0]} healthy and {counts[1]} fractured (grade >= {fracture_grade}) "
            "vertebrae with crops; the classifier needs both classes"
        )


def _append_log(path: Path, row: dict[str, Any]) -> None:
    """Append one row to the CSV training log (header on first write)."""
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def train_classifier(opt: argparse.Namespace) -> dict[str, Any]:
    """Train the fracture classifier; writes the checkpoint, a CSV log and the val metrics JSON.

    Returns the validation metrics of the final epoch (``balanced_accuracy``, ``auc``,
    ``confusion_matrix`` [[TN, FP], [FN, TP]] per vertebra, ...) plus ``checkpoint``,
    ``seconds_per_epoch`` and ``train``/``val`` counts.
    """
    seed_everything(opt.seed, deterministic=opt.deterministic)
    device = resolve_device(opt.gpu_ids)
    split = read_split(opt.split_json)
    require_listed_crops(opt.dataroot, sorted({*split["train"], *split["val"]}), opt.split_json)
    out_dir = prepare_output_dir(Path(opt.checkpoints_dir) / opt.name, "classifier folder (--checkpoints_dir/--name)")
    slice_input = SliceInput((float(opt.hu_window[0]), float(opt.hu_window[1])), float(opt.view_mm),
                             opt.vertebra_margin_mm)
    train_set, skipped_train = load_vertebra_slices(opt.dataroot, split["train"], opt.fracture_grade, opt.n_slices,
                                                    opt.min_body_px, slice_input)
    val_set, skipped_val = load_vertebra_slices(opt.dataroot, split["val"], opt.fracture_grade, opt.n_slices,
                                                opt.min_body_px, slice_input)
    _require_both_classes(train_set, opt.split_json, opt.fracture_grade)
    if not val_set:
        LOGGER.warning("%s: no usable 'val' vertebra; validation metrics are not computed", opt.split_json)

    geometry = training_crop_geometry(opt.dataroot, sorted(split["train"]))
    dataset = SliceDataset(train_set)
    generator = torch.Generator().manual_seed(opt.seed)
    sampler = WeightedRandomSampler(sample_weights(dataset, balance_classes=opt.balance == "sampler"),
                                    num_samples=len(train_set) * opt.slices_per_vertebra, replacement=True,
                                    generator=generator)
    loader = DataLoader(dataset, batch_size=opt.batch_size, sampler=sampler, num_workers=opt.num_threads,
                        drop_last=len(sampler) > opt.batch_size)
    model = build_classifier(opt.arch).to(device)
    class_weights = loss_class_weights(train_set).to(device) if opt.balance == "loss" else None
    criterion = nn.CrossEntropyLoss(weight=class_weights)
    optimizer, scheduler = adamw_with_linear_decay(model, opt)

    log_path = out_dir / LOG_FILE
    if log_path.exists():
        log_path.unlink()
    ckpt = checkpoint_path(opt.checkpoints_dir, opt.name)
    n_epochs = opt.n_epochs + opt.n_epochs_decay
    metrics: dict[str, Any] = {}
    epoch_seconds = []
    for epoch in range(1, n_epochs + 1):
        model.train()
        started = time.perf_counter()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch}/{n_epochs}", unit="batch", leave=False)
        for images, target, _ in bar:
            if opt.vertical_flip:
                images = random_vertical_flip(images, generator)
            images = random_shift(images, opt.max_shift, generator).to(device)
            loss = criterion(model(images), target.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        scheduler.step()
        epoch_seconds.append(time.perf_counter() - started)
        metrics = evaluate(model, val_set, device, opt.batch_size) if val_set else {}
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": float(np.mean(losses)),
               "val_balanced_accuracy": metrics.get("balanced_accuracy"), "val_auc": metrics.get("auc"),
               "seconds": round(epoch_seconds[-1], 3)}
        _append_log(log_path, row)
        LOGGER.info("epoch %d/%d loss %.4f val balanced accuracy %s AUC %s", epoch, n_epochs, row["train_loss"],
                    row["val_balanced_accuracy"], row["val_auc"])
        save_classifier(ckpt, model, opt, epoch, metrics, geometry)

    result = dict(metrics)
    result.update({
        "checkpoint": str(ckpt),
        "epochs": n_epochs,
        "seconds_per_epoch": float(np.median(epoch_seconds)),
        "n_train": {"healthy": sum(not v.fractured for v in train_set),
                    "fractured": sum(v.fractured for v in train_set)},
        "skipped": sorted(skipped_train + skipped_val),
        "device": str(device),
    })
    write_json(out_dir / METRICS_FILE, result)
    return result


def format_metrics(metrics: dict[str, Any]) -> str:
    """A short human-readable summary of :func:`train_classifier`'s metrics."""
    if metrics.get("balanced_accuracy") is None:
        return f"no validation vertebrae; checkpoint {metrics['checkpoint']}"
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    auc = "n/a (one class)" if metrics["auc"] is None else f"{metrics['auc']:.3f}"
    return (f"val (per vertebra): balanced accuracy {metrics['balanced_accuracy']:.3f}, AUC {auc}, "
            f"confusion [[TN {tn}, FP {fp}], [FN {fn}, TP {tp}]]; checkpoint {metrics['checkpoint']}")


__all__ = ["add_optimizer_and_device_options", "adamw_with_linear_decay", "classification_metrics", "classifier_parser",
           "evaluate", "format_metrics", "linear_decay", "parse_classifier_options", "predict_probabilities",
           "train_classifier"]
