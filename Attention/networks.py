"""Networks of the fracture classifier (docs/design.md, 'Attention classifier').

MONAI's SE-ResNet-50 in 2D (``seresnet50``, the paper's) and a small SE-ResNet built from MONAI's SE
blocks (``small``, for CPU). Both take sagittal slices (B, 1, H, W) and return two logits (0 healthy,
1 fractured); both expose ``layer4``, where Grad-CAM++ is computed (:func:`cam_target_layer`).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.blocks.squeeze_and_excitation import SEBlock
from monai.networks.layers.factories import Norm
from monai.networks.nets import SEResNet50
from torch import nn

ARCHS = ("seresnet50", "small")
FRACTURE_CLASS = 1
NUM_CLASSES = 2


def se_bottleneck(in_channels: int, out_channels: int, stride: int, dilation: int, reduction: int,
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
            stages.append(nn.Sequential(se_bottleneck(channels, out_channels, stride, 1, reduction)))
            channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.context = nn.Sequential(*[
            se_bottleneck(channels, channels, 1, self.CONTEXT_DILATION, reduction) for _ in range(self.CONTEXT_BLOCKS)
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


__all__ = ["ARCHS", "FRACTURE_CLASS", "NUM_CLASSES", "SmallSEResNet", "build_classifier", "cam_target_layer",
           "se_bottleneck"]
