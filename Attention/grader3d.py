"""3D SupCon-SENet: an end-to-end Genant grader on straightened CT crops (the paper's third baseline).

After Wei et al., "Faint Features Tell: Automatic Vertebrae Fracture Screening Assisted by
Contrastive Learning" (arXiv 2208.10698): a 3D SE-ResNet sees the CT crop around one vertebra
(windowed to [-1, 1], optionally the central ``--roi_size`` voxels) and predicts its Genant grade
(4 classes). Training minimises cross-entropy on the grade plus ``lambda_supcon`` times the
supervised contrastive loss (Khosla et al., NeurIPS 2020) of L2-normalised projections of the
pooled features; each crop enters a batch as ``n_views`` augmented views (superior-inferior flip,
translation), and batches are drawn class-balanced (each grade equally likely).

Protocol (``evaluation/grading.py``'s, so the comparison has one scorer): the train + test
vertebrae form the pool, ``StratifiedKFold`` (``grading_folds``) splits it; fold k trains a fresh
network on its training part and predicts the whole val split. Predictions go to a table
``Vertebra, Label, Dataset, Fold, Predicted, P0..P3`` scored by ``score_prediction_table``.

Networks: MONAI ``SEResNet50(spatial_dims=3)`` (``seresnet50``, for a GPU) and a small 3D SE-ResNet
from the HGAM classifier's SE bottleneck (``small``, for CPU). Input (B, 1, S, A, R) crops.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Norm
from monai.networks.nets import SEResNet50
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm import tqdm

from Attention.checkpoint import plain_options
from Attention.networks import se_bottleneck
from Attention.training import adamw_with_linear_decay, add_optimizer_and_device_options
from data.crops import crop_paths, load_crop, read_split
from data.image_io import DEFAULT_WINDOW_HU, window_hu
from evaluation.grading import POOL_SPLITS, SCORE_SPLIT, grading_folds
from util.device import seed_everything
from util.distributed import resolve_device
from util.fileio import atomic_torch_save, read_torch_file

LOGGER = logging.getLogger(__name__)

ARCHS = ("seresnet50", "small")
NUM_GRADES = 4
CHECKPOINT_FORMAT = "grader3d-1"


# --------------------------------------------------------------------------- networks
class SmallSEResNet3D(nn.Module):
    """Small 3D SE-ResNet for CPU: a 7^3 stride-2 stem and four SE bottleneck stages (widths
    ``base_width * (1, 2, 4, 8)``, strides 1, 2, 2, 2); returns pooled (B, 8 * base_width) features."""

    def __init__(self, in_channels: int = 1, base_width: int = 16, reduction: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = [Convolution(spatial_dims=3, in_channels=in_channels, out_channels=base_width,
                                               strides=2, kernel_size=7, act=("relu", {"inplace": True}),
                                               norm=Norm.BATCH, bias=False)]
        channels = base_width
        for stage, stride in enumerate((1, 2, 2, 2)):
            width = base_width * 2 ** stage
            layers.append(se_bottleneck(channels, width, stride, 1, reduction, spatial_dims=3))
            channels = width
        self.body = nn.Sequential(*layers)
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool3d(self.body(x), 1), 1)


class SEResNet50Features3D(nn.Module):
    """MONAI ``SEResNet50(spatial_dims=3)`` up to its pooled (B, 2048) features."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.net = SEResNet50(spatial_dims=3, in_channels=in_channels, num_classes=NUM_GRADES)
        self.out_features = self.net.last_linear.in_features
        self.net.last_linear = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SupConGrader(nn.Module):
    """Backbone + linear grade classifier + projection head (Linear-ReLU-Linear, L2-normalised output).

    ``forward`` returns (grade logits (B, 4), unit projections (B, projection_dim)).
    """

    def __init__(self, arch: str = "seresnet50", projection_dim: int = 128, base_width: int = 16) -> None:
        super().__init__()
        if arch == "seresnet50":
            self.backbone: nn.Module = SEResNet50Features3D()
        elif arch == "small":
            self.backbone = SmallSEResNet3D(base_width=base_width)
        else:
            raise ValueError(f"unknown grader arch {arch!r}; choose one of {list(ARCHS)}")
        features = self.backbone.out_features
        self.classifier = nn.Linear(features, NUM_GRADES)
        self.projection = nn.Sequential(nn.Linear(features, features), nn.ReLU(inplace=True),
                                        nn.Linear(features, projection_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        return self.classifier(features), F.normalize(self.projection(features), dim=1)


# --------------------------------------------------------------------------- loss
def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07
                                ) -> torch.Tensor:
    """Supervised contrastive loss L_out (Khosla et al. 2020, eq. 2) of (N, D) unit ``embeddings``.

    For anchor i with positives P(i) (same label, j != i) and A(i) = all j != i:
    l_i = -1/|P(i)| sum_{p in P(i)} log(exp(z_i.z_p / t) / sum_{a in A(i)} exp(z_i.z_a / t));
    the loss is the mean of l_i over anchors with at least one positive (0 when there is none).
    """
    count = embeddings.shape[0]
    logits = embeddings @ embeddings.T / temperature
    self_mask = torch.eye(count, dtype=torch.bool, device=embeddings.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels.view(-1, 1) == labels.view(1, -1)) & ~self_mask
    n_positives = positives.sum(dim=1)
    has_positive = n_positives > 0
    if not has_positive.any():
        return embeddings.sum() * 0.0
    positive_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return -(positive_log_prob[has_positive] / n_positives[has_positive]).mean()


# --------------------------------------------------------------------------- data
@dataclass
class GraderSample:
    """One vertebra: windowed float16 (S, A, R) crop, Genant grade, split."""

    key: str
    grade: int
    split: str
    volume: np.ndarray


def central_roi(volume: np.ndarray, roi_size: Sequence[int]) -> np.ndarray:
    """The central ``roi_size`` voxels of a (S, A, R) volume (0 or a size beyond the volume: the whole axis)."""
    slices = []
    for length, size in zip(volume.shape, roi_size):
        size = length if size <= 0 or size >= length else int(size)
        start = (length - size) // 2
        slices.append(slice(start, start + size))
    return volume[tuple(slices)]


def load_grader_samples(dataroot: str | Path, split: dict[str, dict[str, int]], roi_size: Sequence[int],
                        window: tuple[float, float]) -> tuple[list[GraderSample], list[str]]:
    """Windowed crops of every vertebra of the split; returns (samples, keys skipped for a missing crop).

    A crop that exists but cannot be read raises an error naming the file; crops of different
    shapes (after the ROI) raise an error.
    """
    samples, skipped = [], []
    entries = sorted((key, int(grade), name) for name, grades in split.items() for key, grade in grades.items())
    for key, grade, name in tqdm(entries, desc="loading crops", unit="crop", leave=False):
        paths = crop_paths(dataroot, key)
        if not paths.ct.is_file() or not paths.label.is_file():
            LOGGER.warning("%s: crop file missing; vertebra skipped", key)
            skipped.append(key)
            continue
        crop = load_crop(dataroot, key)
        volume = central_roi(window_hu(crop.ct_hu, window), roi_size).astype(np.float16)
        samples.append(GraderSample(key, grade, name, volume))
    shapes = {s.volume.shape for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"{dataroot}: crops differ in shape {sorted(shapes)}; "
                         "straighten them to one size or set --roi_size")
    return samples, skipped


class CropDataset(Dataset):
    """Item = (volume (1, S, A, R) float32, grade)."""

    def __init__(self, samples: Sequence[GraderSample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        return torch.from_numpy(sample.volume.astype(np.float32))[None], sample.grade


def class_balanced_weights(grades: Sequence[int]) -> torch.Tensor:
    """Per-sample weights 1 / (count of its grade): every grade present is drawn equally often."""
    grades = np.asarray(grades)
    counts = {g: int(np.count_nonzero(grades == g)) for g in set(grades.tolist())}
    return torch.tensor([1.0 / counts[g] for g in grades.tolist()], dtype=torch.double)


def augment(volumes: torch.Tensor, max_shift: int, generator: torch.Generator, fill: float = -1.0) -> torch.Tensor:
    """A random view of each (B, 1, S, A, R) volume: superior-inferior flip with probability 1/2 (a height
    loss stays a height loss) and a translation of up to ``max_shift`` voxels per axis (padding ``fill``)."""
    flip = torch.rand(volumes.shape[0], generator=generator) < 0.5
    volumes = torch.where(flip.view(-1, 1, 1, 1, 1), volumes.flip(2), volumes)
    if max_shift <= 0:
        return volumes
    shape = volumes.shape[2:]
    padded = F.pad(volumes, (max_shift,) * 6, value=fill)
    offsets = torch.randint(0, 2 * max_shift + 1, (volumes.shape[0], 3), generator=generator).tolist()
    return torch.stack([padded[i, :, s:s + shape[0], a:a + shape[1], r:r + shape[2]]
                        for i, (s, a, r) in enumerate(offsets)])


# --------------------------------------------------------------------------- training and prediction
def train_fold(samples: Sequence[GraderSample], opt: argparse.Namespace, device: torch.device,
               seed: int, log_prefix: str = "") -> tuple[SupConGrader, list[dict[str, float]]]:
    """Train a fresh grader on ``samples``; returns it (eval mode) and the per-epoch loss log."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SupConGrader(opt.arch, opt.projection_dim, opt.base_width).to(device)
    dataset = CropDataset(samples)
    per_epoch = max(len(samples), opt.batch_size)
    sampler = WeightedRandomSampler(class_balanced_weights([s.grade for s in samples]), per_epoch,
                                    replacement=True, generator=generator)
    loader = DataLoader(dataset, batch_size=opt.batch_size, sampler=sampler, num_workers=opt.num_threads,
                        drop_last=per_epoch > opt.batch_size)
    optimizer, scheduler = adamw_with_linear_decay(model, opt)
    log = []
    for epoch in range(1, opt.n_epochs + opt.n_epochs_decay + 1):
        model.train()
        sums = np.zeros(3)
        batches = 0
        for volumes, grades in loader:
            views = torch.cat([augment(volumes, opt.max_shift, generator) for _ in range(opt.n_views)]).to(device)
            labels = grades.repeat(opt.n_views).to(device)
            logits, projections = model(views)
            cross_entropy = F.cross_entropy(logits, labels)
            contrastive = supervised_contrastive_loss(projections, labels, opt.temperature)
            loss = cross_entropy + opt.lambda_supcon * contrastive
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += [float(loss.detach()), float(cross_entropy.detach()), float(contrastive.detach())]
            batches += 1
        scheduler.step()
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
               **dict(zip(("loss", "cross_entropy", "supcon"), (sums / max(batches, 1)).tolist()))}
        log.append(row)
        LOGGER.info("%sepoch %d loss %.4f (CE %.4f, SupCon %.4f)", log_prefix, epoch, row["loss"],
                    row["cross_entropy"], row["supcon"])
    return model.eval(), log


@torch.no_grad()
def predict_grades(model: SupConGrader, samples: Sequence[GraderSample], device: torch.device,
                   batch_size: int) -> np.ndarray:
    """(N, 4) grade probabilities of ``samples`` (softmax of the classifier head, eval mode)."""
    model.eval()
    dataset = CropDataset(samples)
    out = []
    for start in range(0, len(samples), batch_size):
        volumes = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(samples)))])
        out.append(torch.softmax(model(volumes.to(device))[0], dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, NUM_GRADES), dtype=np.float32)


def save_grader(path: str | Path, model: SupConGrader, opt: argparse.Namespace, fold: int,
                train_keys: Sequence[str], log: list[dict[str, float]]) -> None:
    """Atomic checkpoint, loadable with ``torch.load(weights_only=True)``."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "arch": opt.arch, "projection_dim": opt.projection_dim,
                       "base_width": opt.base_width, "window_hu": [float(w) for w in opt.hu_window],
                       "roi_size": [int(v) for v in opt.roi_size], "fold": int(fold),
                       "train_keys": list(train_keys), "log": log, "options": plain_options(opt),
                       "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)


def load_grader(path: str | Path, device: torch.device | str = "cpu") -> tuple[SupConGrader, dict[str, Any]]:
    """The grader of a checkpoint (eval mode) and the checkpoint dict; errors name the file."""
    checkpoint = read_torch_file(path, "grader checkpoint", "; train one with python Attention/train_grader3d.py")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a 3D grader checkpoint")
    model = SupConGrader(checkpoint["arch"], checkpoint["projection_dim"], checkpoint["base_width"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        reason = str(err).splitlines()[0]
        raise ValueError(f"{path}: weights do not fit arch {checkpoint['arch']!r} ({reason})") from None
    return model.to(device).eval(), checkpoint


def prediction_rows(samples: Sequence[GraderSample], probabilities: np.ndarray, fold: int) -> list[dict[str, Any]]:
    """Rows ``Vertebra, Label, Dataset, Fold, Predicted, P0..P3`` of the prediction table."""
    return [{"Vertebra": s.key, "Label": s.grade, "Dataset": s.split, "Fold": fold,
             "Predicted": int(np.argmax(p)), **{f"P{g}": float(p[g]) for g in range(NUM_GRADES)}}
            for s, p in zip(samples, probabilities)]


def run_grading_protocol(opt: argparse.Namespace) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Train one grader per fold of the train+test pool and predict val with each.

    Returns the prediction table and a summary (pool class counts, fold training sizes, skipped keys,
    seconds per fold). Checkpoints: ``<checkpoints_dir>/<name>/grader3d_fold<k>.pth``.
    """
    seed_everything(opt.seed, deterministic=opt.deterministic)
    device = resolve_device(opt.gpu_ids)
    split = read_split(opt.split_json)
    window = (float(opt.hu_window[0]), float(opt.hu_window[1]))
    samples, skipped = load_grader_samples(opt.dataroot, split, opt.roi_size, window)
    pool = [s for s in samples if s.split in POOL_SPLITS]
    val = [s for s in samples if s.split == SCORE_SPLIT]
    if not pool:
        raise ValueError(f"{opt.split_json}: no {'/'.join(POOL_SPLITS)} vertebra with a crop to train on")
    if not val:
        raise ValueError(f"{opt.split_json}: no {SCORE_SPLIT} vertebra with a crop to score on")
    pool_y = np.array([s.grade for s in pool])
    folds = grading_folds(pool_y, opt.n_splits, opt.grading_seed)
    out_dir = Path(opt.checkpoints_dir) / opt.name
    rows: list[dict[str, Any]] = []
    train_sizes: dict[int, int] = {}
    seconds = []
    for index, (train_rows, _) in enumerate(folds, start=1):
        started = time.perf_counter()
        fold_samples = [pool[i] for i in train_rows]
        model, log = train_fold(fold_samples, opt, device, opt.seed + index, f"fold {index}/{len(folds)}: ")
        save_grader(out_dir / f"grader3d_fold{index}.pth", model, opt, index, [s.key for s in fold_samples], log)
        rows += prediction_rows(val, predict_grades(model, val, device, opt.batch_size), index)
        train_sizes[index] = len(fold_samples)
        seconds.append(time.perf_counter() - started)
    summary = {"pool_class_counts": {str(g): int(np.count_nonzero(pool_y == g)) for g in sorted(set(pool_y.tolist()))},
               "fold_train_sizes": train_sizes, "skipped": skipped, "seconds_per_fold": seconds, "device": str(device)}
    return pd.DataFrame(rows), summary


def grader_parser() -> argparse.ArgumentParser:
    """Command-line options of ``Attention/train_grader3d.py``."""
    parser = argparse.ArgumentParser(
        description="Train the 3D SupCon-SENet Genant grader (one network per grading fold) and score it on val "
                    "with the grading scorer. Writes <results_dir>/<name>/predictions.csv and grading/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataroot", type=Path, required=True, help="straightened crop folder (CT/, label/)")
    parser.add_argument("--split_json", type=Path, required=True,
                        help="split JSON {train,val,test: {<case>_<v>: grade}}")
    parser.add_argument("--name", required=True, help="experiment name (checkpoint and results folder)")
    parser.add_argument("--checkpoints_dir", type=Path, default=Path("checkpoints"), help="where models are saved")
    parser.add_argument("--results_dir", type=Path, default=Path("results"),
                        help="predictions and grading go to <results_dir>/<name>/")
    parser.add_argument("--arch", choices=ARCHS, default="seresnet50",
                        help="seresnet50: MONAI SE-ResNet-50 (3D), for a GPU; small: a small 3D SE-ResNet, for CPU")
    parser.add_argument("--base_width", type=int, default=16, help="small arch: width of the first stage")
    parser.add_argument("--roi_size", type=int, nargs=3, default=[0, 0, 0], metavar=("S", "A", "R"),
                        help="central voxels of each crop fed to the network (0: the whole axis)")
    parser.add_argument("--hu_window", type=float, nargs=2, default=list(DEFAULT_WINDOW_HU), metavar=("LOW", "HIGH"),
                        help="HU window mapped to [-1, 1]")
    parser.add_argument("--projection_dim", type=int, default=128, help="output size of the projection head")
    parser.add_argument("--lambda_supcon", type=float, default=1.0, help="weight of the supervised contrastive loss")
    parser.add_argument("--temperature", type=float, default=0.07, help="SupCon temperature")
    parser.add_argument("--n_views", type=int, default=2, help="augmented views of each crop per batch")
    parser.add_argument("--max_shift", type=int, default=4, help="random translation augmentation (voxels per axis)")
    parser.add_argument("--n_splits", type=int, default=5,
                        help="stratified folds of the train+test pool (as SVM_grading.py)")
    parser.add_argument("--grading_seed", type=int, default=0, help="fold shuffling seed (SVM_grading.py --seed)")
    parser.add_argument("--n_epochs", type=int, default=30, help="epochs at the initial learning rate")
    parser.add_argument("--n_epochs_decay", type=int, default=30, help="epochs of linear decay to zero")
    parser.add_argument("--batch_size", type=int, default=8, help="crops per batch (each in --n_views views)")
    add_optimizer_and_device_options(parser, seed_help="random seed (fold k trains with seed + k)")
    return parser


def parse_grader_options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check ``train_grader3d`` options."""
    parser = grader_parser()
    opt = parser.parse_args(argv)
    for flag in ("batch_size", "n_views", "projection_dim", "base_width", "n_splits"):
        if getattr(opt, flag) < 1:
            parser.error(f"--{flag} must be >= 1")
    if opt.n_epochs + opt.n_epochs_decay < 1:
        parser.error("--n_epochs + --n_epochs_decay must be >= 1")
    if opt.hu_window[1] <= opt.hu_window[0]:
        parser.error("--hu_window: HIGH must exceed LOW")
    if opt.base_width < 8:
        parser.error("--base_width must be >= 8 (the squeeze-and-excitation blocks reduce channels 8-fold)")
    if opt.temperature <= 0:
        parser.error("--temperature must be > 0")
    return opt
