"""Fracture classifier on sagittal slices of straightened crops (HGAM, DESIGN 4.5).

A vertebra is *fractured* when its Genant grade is >= ``fracture_grade``
(default 1). The classifier sees single sagittal slices ``ct[:, :, z]`` of a
crop (rows superior -> inferior, columns anterior -> posterior), windowed with
:func:`data.image_io.window_hu` to [-1, 1], and predicts two classes
(0 healthy, 1 fractured). Slices are taken from the central ``n_slices``
sagittal slices of the crop that contain at least ``min_body_px`` voxels of the
target vertebra's body. Validation scores are per vertebra: the mean fracture
probability over its slices.

Networks: MONAI's SE-ResNet-50 in 2D (``seresnet50``, the paper's) and a small
SE-ResNet built from MONAI's SE blocks (``small``, for CPU). Both expose
``layer4`` (the last convolutional block), where Grad-CAM++ is computed.
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.blocks import Convolution
from monai.networks.blocks.squeeze_and_excitation import SEBlock
from monai.networks.layers.factories import Norm
from monai.networks.nets import SEResNet50
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm import tqdm

from data.crops import load_crop, read_split, require_listed_crops
from data.image_io import DEFAULT_WINDOW_HU, window_hu
from util import published_layout
from util.device import seed_everything
from util.distributed import resolve_device
from util.fileio import atomic_torch_save, prepare_output_dir, read_torch_file, write_json

LOGGER = logging.getLogger(__name__)

ARCHS = ("seresnet50", "small")
CHECKPOINT_FILE = "classifier.pth"
METRICS_FILE = "classifier_metrics.json"
LOG_FILE = "classifier_log.csv"
FRACTURE_CLASS = 1
NUM_CLASSES = 2
CHECKPOINT_FORMAT = 1


# --------------------------------------------------------------------------- networks


def _se_bottleneck(in_channels: int, out_channels: int, stride: int, dilation: int, reduction: int,
                   spatial_dims: int = 2) -> SEBlock:
    """SE-ResNet bottleneck (1x1 -> 3x3 -> 1x1, width ``out_channels // 4``) with a projected shortcut,
    2D by default (``spatial_dims=3``: the 3D grader, ``Attention/grader3d.py``)."""
    inner = max(out_channels // 4, 4)
    project = None
    if stride != 1 or in_channels != out_channels:
        project = Convolution(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, strides=stride,
            kernel_size=1, act=None, norm=Norm.BATCH, bias=False,
        )
    relu = ("relu", {"inplace": True})
    return SEBlock(
        spatial_dims=spatial_dims, in_channels=in_channels, n_chns_1=inner, n_chns_2=inner, n_chns_3=out_channels,
        conv_param_1={"strides": stride, "kernel_size": 1, "act": relu, "norm": Norm.BATCH, "bias": False},
        conv_param_2={"kernel_size": 3, "dilation": dilation, "act": relu, "norm": Norm.BATCH, "bias": False},
        conv_param_3={"kernel_size": 1, "act": None, "norm": Norm.BATCH, "bias": False},
        project=project, r=reduction,
    )


class SmallSEResNet(nn.Module):
    """Small 2D SE-ResNet for CPU training (about 0.33 M parameters at ``base_width=32``).

    Backbone: a 7x7 stride-2 stem (``layer0``) and four stages (``layer1``..``layer4``) of
    one SE bottleneck each, widths ``base_width * (1, 2, 4, 8)``, strides (1, 2, 2, 1):
    total stride 8, receptive field about 51 px. Head: a context stage of two SE
    bottlenecks with dilation 2 (receptive field about 115 px, enough to compare a body
    with its neighbours), global average pooling and a linear layer.

    Grad-CAM++ is taken at ``layer4``, the backbone's last block (1/8 input resolution,
    not SE-ResNet-50's 1/32): its features say where the fracture is, while the context
    stage decides by comparing with the neighbours. On held-out phantoms the maps at
    ``layer4`` put more mass in the fractured body than in its healthy neighbours for 9
    of 11 fractures; at the context stage's output, for 3 of 11.
    Input (B, C, H, W), output logits (B, num_classes).
    """

    STAGE_STRIDES = (1, 2, 2, 1)
    CONTEXT_BLOCKS = 2
    CONTEXT_DILATION = 2

    def __init__(self, in_channels: int = 1, num_classes: int = NUM_CLASSES, base_width: int = 32,
                 reduction: int = 8) -> None:
        super().__init__()
        self.layer0 = Convolution(
            spatial_dims=2, in_channels=in_channels, out_channels=base_width, strides=2, kernel_size=7,
            act=("relu", {"inplace": True}), norm=Norm.BATCH, bias=False,
        )
        channels = base_width
        stages = []
        for stage, stride in enumerate(self.STAGE_STRIDES):
            out_channels = base_width * 2**stage
            stages.append(nn.Sequential(_se_bottleneck(channels, out_channels, stride, 1, reduction)))
            channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.context = nn.Sequential(*[
            _se_bottleneck(channels, channels, 1, self.CONTEXT_DILATION, reduction) for _ in range(self.CONTEXT_BLOCKS)
        ])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.last_linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of images (B, C, H, W)."""
        for layer in (self.layer0, self.layer1, self.layer2, self.layer3, self.layer4, self.context):
            x = layer(x)
        return self.last_linear(torch.flatten(self.pool(x), 1))


def build_classifier(arch: str, in_channels: int = 1, num_classes: int = NUM_CLASSES) -> nn.Module:
    """A 2D classifier: ``"seresnet50"`` (MONAI SE-ResNet-50, the paper's) or ``"small"`` (CPU)."""
    if arch == "seresnet50":
        return SEResNet50(spatial_dims=2, in_channels=in_channels, num_classes=num_classes)
    if arch == "small":
        return SmallSEResNet(in_channels=in_channels, num_classes=num_classes)
    raise ValueError(f"unknown classifier arch {arch!r}; choose one of {list(ARCHS)}")


def cam_target_layer(model: nn.Module) -> nn.Module:
    """Where Grad-CAM++ is computed: the last block of ``layer4`` (SE-ResNet-50's last convolutional
    block; the small network's last backbone block, see :class:`SmallSEResNet`)."""
    return model.layer4[-1]


# --------------------------------------------------------------------------- slices


def central_sagittal_slices(n_axis: int, n_slices: int) -> tuple[int, int]:
    """``(start, stop)`` of the ``n_slices`` central indices of an axis of length ``n_axis`` (clamped)."""
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    count = min(n_slices, n_axis)
    start = n_axis // 2 - count // 2
    start = min(max(start, 0), n_axis - count)
    return start, start + count


def sagittal_slices(ct_hu: np.ndarray, slice_indices: Sequence[int],
                    window: tuple[float, float] = DEFAULT_WINDOW_HU) -> np.ndarray:
    """Windowed sagittal slices ``ct[:, :, z]`` as float32 (N, 1, D0, D1) in [-1, 1].

    ``ct_hu`` is a crop (S->I, A->P, R->L) in HU; rows of each slice run S->I, columns A->P.
    """
    picked = np.asarray(ct_hu)[:, :, list(slice_indices)]
    return np.ascontiguousarray(np.moveaxis(window_hu(picked, window), 2, 0)[:, None])


def body_slice_indices(label_map: np.ndarray, label: int, start: int, stop: int, min_body_px: int) -> list[int]:
    """Sagittal slices in [start, stop) holding at least ``min_body_px`` voxels of ``label``."""
    counts = (np.asarray(label_map)[:, :, start:stop] == label).sum(axis=(0, 1))
    return [start + int(i) for i in np.flatnonzero(counts >= min_body_px)]


@dataclass
class VertebraSlices:
    """Training slices of one vertebra: windowed float16 (N, D0, D1) and its class."""

    key: str
    grade: int
    fractured: bool
    slices: np.ndarray


def load_vertebra_slices(dataroot: str | Path, grades: dict[str, int], fracture_grade: int, n_slices: int,
                         min_body_px: int, window: tuple[float, float],
                         ) -> tuple[list[VertebraSlices], list[str]]:
    """Windowed sagittal slices of every vertebra in ``grades`` (key -> Genant grade).

    Returns the loaded vertebrae and the keys skipped because no central slice holds
    ``min_body_px`` voxels of the body. A missing or unreadable crop raises an error naming the
    file (callers check the list first with ``data.crops.require_listed_crops``).
    """
    vertebrae: list[VertebraSlices] = []
    skipped: list[str] = []
    for key, grade in tqdm(sorted(grades.items()), desc="loading crops", unit="crop", leave=False):
        crop = load_crop(dataroot, key)
        start, stop = central_sagittal_slices(crop.ct_hu.shape[2], n_slices)
        indices = body_slice_indices(crop.label_map, crop.label, start, stop, min_body_px)
        if not indices:
            LOGGER.warning("%s: no central sagittal slice has %d body voxels; vertebra skipped", key, min_body_px)
            skipped.append(key)
            continue
        slices = sagittal_slices(crop.ct_hu, indices, window)[:, 0].astype(np.float16)
        vertebrae.append(VertebraSlices(key, grade, grade >= fracture_grade, slices))
    shapes = {v.slices.shape[1:] for v in vertebrae}
    if len(shapes) > 1:
        examples = {v.slices.shape[1:]: v.key for v in vertebrae}
        raise ValueError(f"{dataroot}: crops differ in sagittal slice shape: {examples}; straighten them to one size")
    return vertebrae, skipped


class SliceDataset(Dataset):
    """All slices of a list of vertebrae; item = (image (1, D0, D1) float32, class, vertebra index)."""

    def __init__(self, vertebrae: list[VertebraSlices]) -> None:
        self.vertebrae = vertebrae
        self.index = [(v, s) for v, vert in enumerate(vertebrae) for s in range(len(vert.slices))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, int]:
        vertebra, slice_pos = self.index[item]
        vert = self.vertebrae[vertebra]
        image = torch.from_numpy(vert.slices[slice_pos].astype(np.float32))[None]
        return image, int(vert.fractured), vertebra


def sample_weights(dataset: SliceDataset, balance_classes: bool) -> torch.Tensor:
    """Per-slice sampling weights: every vertebra gets equal mass (split equally between the
    two classes when ``balance_classes``), shared by its slices."""
    fractured = np.array([v.fractured for v in dataset.vertebrae])
    vertebra_mass = np.ones(len(fractured))
    if balance_classes:
        for cls in (False, True):
            vertebra_mass[fractured == cls] = 1.0 / max(int((fractured == cls).sum()), 1)
    return torch.tensor(
        [vertebra_mass[v] / len(dataset.vertebrae[v].slices) for v, _ in dataset.index], dtype=torch.double
    )


def loss_class_weights(vertebrae: list[VertebraSlices]) -> torch.Tensor:
    """Cross-entropy class weights inversely proportional to the vertebra count of each class."""
    counts = np.bincount([int(v.fractured) for v in vertebrae], minlength=NUM_CLASSES).astype(np.float64)
    weights = counts.sum() / (NUM_CLASSES * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def random_vertical_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of (B, C, H, W) superior <-> inferior with probability 1/2.

    A flipped column of vertebrae is still a plausible spine and a height loss stays a height
    loss, so the label is kept; anterior/posterior is never flipped (wedges are anterior).
    """
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(2), images)


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator, fill: float = -1.0) -> torch.Tensor:
    """Translate each image of (B, C, H, W) by up to ``max_shift`` px per axis, padding with ``fill``."""
    if max_shift <= 0:
        return images
    _, _, height, width = images.shape
    padded = nn.functional.pad(images, (max_shift,) * 4, value=fill)
    offsets = torch.randint(0, 2 * max_shift + 1, (images.shape[0], 2), generator=generator)
    return torch.stack([
        padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets.tolist())
    ])


# --------------------------------------------------------------------------- metrics


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


# --------------------------------------------------------------------------- checkpoints


def checkpoint_path(checkpoints_dir: str | Path, name: str) -> Path:
    """``<checkpoints_dir>/<name>/classifier.pth``."""
    return Path(checkpoints_dir) / name / CHECKPOINT_FILE


def plain_options(opt: argparse.Namespace) -> dict[str, Any]:
    """Options as a dict of plain Python values (paths as str, tuples as lists)."""
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value
    return {key: plain(value) for key, value in vars(opt).items()}


def save_classifier(path: str | Path, model: nn.Module, opt: argparse.Namespace, epoch: int,
                    metrics: dict[str, Any], crop_geometry: dict[str, Any] | None = None) -> None:
    """Write the checkpoint atomically: a plain dict loadable with ``torch.load(weights_only=True)``.

    ``crop_geometry`` (``crop_size`` voxels, ``crop_spacing_mm`` per axis) records the crops it was trained on.
    """
    state = {
        "format": CHECKPOINT_FORMAT,
        "arch": opt.arch,
        "in_channels": 1,
        "num_classes": NUM_CLASSES,
        "fracture_class": FRACTURE_CLASS,
        "window_hu": [float(w) for w in opt.hu_window],
        "epoch": int(epoch),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "options": plain_options(opt),
        "metrics": {k: v for k, v in metrics.items() if k != "fracture_probability"},
        **(crop_geometry or {}),
    }
    atomic_torch_save(state, path)


def training_crop_geometry(dataroot: str | Path, keys: Sequence[str]) -> dict[str, Any]:
    """``crop_size`` and ``crop_spacing_mm`` of the first crop of ``keys`` whose sidecar records them ({} if none)."""
    for key in keys:
        sidecar = load_crop(dataroot, key, need_ct=False).sidecar
        if "crop_size" in sidecar and "spacing_mm" in sidecar:
            return {"crop_size": [int(n) for n in sidecar["crop_size"]],
                    "crop_spacing_mm": [float(x) for x in sidecar["spacing_mm"]]}
    return {}


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the classifier of a checkpoint on ``device`` (eval mode); returns (model, checkpoint dict)."""
    checkpoint = read_torch_file(path, "classifier checkpoint",
                                 "; train one first with python Attention/train_classifier.py "
                                 "(same --name; its defaults fit these defaults)")
    missing = {"arch", "state_dict", "window_hu", "in_channels", "num_classes"} - set(checkpoint)
    if not isinstance(checkpoint, dict) or missing:
        raise ValueError(f"{path}: not a classifier checkpoint (missing {sorted(missing)})")
    model = build_classifier(checkpoint["arch"], checkpoint["in_channels"], checkpoint["num_classes"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit arch {checkpoint['arch']!r} ({err})") from None
    return model.to(device).eval(), checkpoint


# --------------------------------------------------------------------------- options and training


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
    window = (float(opt.hu_window[0]), float(opt.hu_window[1]))
    train_set, skipped_train = load_vertebra_slices(opt.dataroot, split["train"], opt.fracture_grade, opt.n_slices,
                                                    opt.min_body_px, window)
    val_set, skipped_val = load_vertebra_slices(opt.dataroot, split["val"], opt.fracture_grade, opt.n_slices,
                                                opt.min_body_px, window)
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


__all__ = [
    "ARCHS", "SmallSEResNet", "VertebraSlices", "build_classifier", "cam_target_layer", "central_sagittal_slices",
    "checkpoint_path", "classification_metrics", "classifier_parser", "evaluate", "format_metrics",
    "load_classifier", "load_vertebra_slices", "parse_classifier_options", "sagittal_slices", "save_classifier",
    "train_classifier", "training_crop_geometry",
]
