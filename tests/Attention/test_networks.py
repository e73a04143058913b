"""Attention.networks: the classifier networks, the SE bottleneck and the layer Grad-CAM++ reads."""

from __future__ import annotations

import pytest
import torch

from Attention.networks import NUM_CLASSES, SmallSEResNet, build_classifier, cam_target_layer, se_bottleneck


def test_small_network_logits_and_layer4_stride():
    torch.manual_seed(0)
    model = SmallSEResNet().eval()
    features = {}
    cam_target_layer(model).register_forward_hook(lambda _m, _i, out: features.setdefault("layer4", out))
    logits = model(torch.randn(2, 1, 64, 48))
    assert logits.shape == (2, NUM_CLASSES)
    assert features["layer4"].shape[-2:] == (8, 6)  # total stride 8 of the backbone


def test_gradients_reach_the_cam_layer():
    torch.manual_seed(0)
    model = build_classifier("small")
    model(torch.randn(2, 1, 32, 32))[:, 1].sum().backward()
    grads = [p.grad for p in cam_target_layer(model).parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_seresnet50_exposes_its_last_block():
    model = build_classifier("seresnet50")
    assert cam_target_layer(model) is model.layer4[-1]


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="unknown classifier arch 'resnet'"):
        build_classifier("resnet")


@pytest.mark.parametrize("spatial_dims, shape", [(2, (1, 8, 16, 16)), (3, (1, 8, 8, 8, 8))])
def test_se_bottleneck_projects_and_strides(spatial_dims, shape):
    block = se_bottleneck(8, 16, stride=2, dilation=1, reduction=4, spatial_dims=spatial_dims).eval()
    out = block(torch.randn(shape))
    assert out.shape == (1, 16, *(s // 2 for s in shape[2:]))
