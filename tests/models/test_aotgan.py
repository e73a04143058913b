"""AOT-GAN baseline: AOT blocks, SM-PatchGAN targets, the training model, exact resume and synthesis."""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import models
import train
from models.aotgan_networks import (
    AOTBlock,
    AOTGenerator,
    AOTSynthesisGenerator,
    SMPatchDiscriminator,
    VGG19Features,
    gate_normalisation,
    gated_residual,
    gaussian_kernel_1d,
    perceptual_and_style_losses,
    sm_patchgan_targets,
)
from models.composition import compose_height_adaptive
from models.synthesis.checkpoints import load_generator
from models.synthesis.runner import GeneratorRunner
from models.synthetic import synthetic_batch
from tests.scripts.test_train import TINY, assert_same_weights, loss_rows, train_two_gloo_ranks
from tests.synthetic_crops import write_synthetic_cohort
from util.checkpoint import load_checkpoint

AOT_TINY = ["--model", "aotgan", "--aot_blocks", "2", "--aot_rates", "1", "2", "--ngf", "4"]


def aot_options(*argv: str, is_train: bool = True) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for flag, default in (("--model", "aotgan"), ("--gpu_ids", "-1"), ("--checkpoints_dir", "checkpoints"),
                          ("--name", "test")):
        parser.add_argument(flag, default=default)
    models.get_option_setter("aotgan")(parser, is_train)
    opt = parser.parse_args(["--ngf", "8", "--ndf", "8", "--aot_blocks", "2", "--aot_rates", "1", "2", *argv])
    opt.isTrain = is_train
    return opt


# ---------------------------------------------------------------------------------------------- AOT block
def test_gate_normalisation_known_values() -> None:
    features = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    std = math.sqrt(5.0 / 3.0)  # unbiased std of 0, 1, 2, 3
    expected = torch.tensor([[5.0 * (2.0 * (v - 1.5) / std - 1.0) for v in row] for row in ((0, 1), (2, 3))])
    assert torch.allclose(gate_normalisation(features)[0, 0], expected, atol=1e-5)
    # a constant map has std 0: every pixel normalises to 5 * (0 - 1) = -5
    assert torch.allclose(gate_normalisation(torch.full((1, 2, 3, 3), 4.0)), torch.full((1, 2, 3, 3), -5.0))


def test_gated_residual_is_identity_at_gate_zero_and_context_at_gate_one() -> None:
    x, fused = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    assert torch.equal(gated_residual(x, fused, torch.zeros(1)), x)
    assert torch.equal(gated_residual(x, fused, torch.ones(1)), fused)
    half = gated_residual(x, fused, torch.full((1,), 0.5))
    assert torch.allclose(half, (x + fused) / 2)


def test_aot_block_shapes_and_gating() -> None:
    torch.manual_seed(0)
    block = AOTBlock(8, rates=(1, 2, 4, 8)).eval()
    x = torch.randn(2, 8, 20, 18)
    assert block(x).shape == x.shape
    assert [b[1].dilation for b in block.branches] == [(1, 1), (2, 2), (4, 4), (8, 8)]
    assert all(b[1].out_channels == 2 for b in block.branches)
    # a zero gate convolution gives a constant gate map: sigmoid(-5) everywhere
    with torch.no_grad():
        block.gate[1].weight.zero_()
        block.gate[1].bias.zero_()
    fused = block.fuse(torch.cat([branch(x) for branch in block.branches], dim=1))
    gate = torch.sigmoid(torch.tensor(-5.0))
    assert torch.allclose(block(x), x * (1 - gate) + fused * gate, atol=1e-6)
    # with a zero fusion the block only scales its input by 1 - sigmoid(-5)
    with torch.no_grad():
        block.fuse[1].weight.zero_()
        block.fuse[1].bias.zero_()
    assert torch.allclose(block(x), x * (1 - gate), atol=1e-6)
    with pytest.raises(ValueError, match="cannot be split"):
        AOTBlock(6, rates=(1, 2, 4, 8))


def test_generator_output_shapes_and_ranges() -> None:
    torch.manual_seed(0)
    generator = AOTGenerator(ngf=4, blocks=2, rates=(1, 2)).eval()
    for size in ((32, 32), (36, 44)):
        ct, seg = generator(torch.randn(2, 1, *size), torch.zeros(2, 1, *size))
        assert ct.shape == seg.shape == (2, 1, *size)
        assert ct.abs().max() <= 1 and seg.min() >= 0 and seg.max() <= 1
    with pytest.raises(ValueError, match="too small for dilation rate 8"):
        AOTGenerator(ngf=4, blocks=1, rates=(1, 8))(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32))


def test_synthesis_generator_shares_weights_and_returns_band_height() -> None:
    torch.manual_seed(0)
    trained = AOTGenerator(ngf=4, blocks=1, rates=(1, 2)).eval()
    synthesis = AOTSynthesisGenerator(ngf=4, blocks=1, rates=(1, 2)).eval()
    synthesis.load_state_dict(trained.state_dict())
    masked, band = torch.randn(3, 1, 32, 32), torch.zeros(3, 1, 32, 32)
    out = synthesis(masked, torch.rand(3, 1, 32, 32), band, torch.rand(3, 1, 32, 32), 12.0)
    ct, seg = trained(masked, band)
    assert torch.equal(out.fine_ct, ct) and torch.equal(out.fine_target_seg, seg)
    assert out.fine_height.tolist() == [12.0, 12.0, 12.0]


# ---------------------------------------------------------------------------------------------- SM-PatchGAN
def test_sm_patchgan_targets_are_the_blurred_inverse_mask() -> None:
    mask = torch.zeros(1, 1, 24, 6)
    mask[:, :, 8:16] = 1.0  # an 8-row band
    fake, real = sm_patchgan_targets(mask, sigma_px=1.5)
    expected = ndimage.gaussian_filter(1.0 - mask[0, 0].numpy().astype(np.float64), 1.5, mode="nearest",
                                       truncate=3.5)
    assert torch.allclose(fake[0, 0], torch.from_numpy(expected).float(), atol=1e-6)
    assert torch.equal(real, torch.ones_like(mask))
    column = fake[0, 0, :, 0]
    assert torch.allclose(column[:2], torch.ones(2), atol=1e-6)
    assert torch.allclose(column[-2:], torch.ones(2), atol=1e-6)
    assert column[11] < 0.05 and 0.3 < column[8] < 0.7  # deep inside the band ~0, at its edge ~0.5
    assert torch.allclose(fake[0, 0], fake[0, 0, :, :1].expand(24, 6))  # rows only: the band spans all columns
    assert gaussian_kernel_1d(10.0).numel() == 71  # the paper's 71 x 71 kernel at sigma 10


def test_sm_discriminator_is_spectrally_normalised_patch_map() -> None:
    net = SMPatchDiscriminator(1, 8)
    scores = net(torch.randn(2, 1, 64, 64))
    assert scores.shape == (2, 1, 6, 6)
    assert sum(hasattr(layer, "parametrizations") for layer in net.model) == 4


# ---------------------------------------------------------------------------------------------- training model
def test_one_step_reaches_every_generator_parameter() -> None:
    torch.manual_seed(0)
    model = models.create_model(aot_options())
    model.setup(model.opt, load=False)
    batch = synthetic_batch(2, 32)
    model.set_input(batch)
    before = {name: p.detach().clone() for name, p in model.netG.named_parameters()}
    model.optimize_parameters()
    for name, param in model.netG.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient reaches {name}"
        assert not torch.equal(param.detach(), before[name]), f"{name} was not updated"
    losses = model.get_current_losses()
    assert {"G_L1", "G_adv", "G_Dice", "G", "D_real", "D_fake"} <= set(losses)
    assert "perceptual" not in losses  # no VGG19 weights given


def test_band_layout_targets_and_generated_height() -> None:
    """The ground truth is the real slice composed into itself with H = M; the fake takes the M band rows."""
    model = models.create_model(aot_options())
    batch = synthetic_batch(3, 32)
    model.set_input(batch)
    model.test()
    m = model.mask_height_px.long()
    real = torch.as_tensor(batch["real_ct"])
    expected = compose_height_adaptive(real, real, batch["target_top"], batch["target_bottom"], batch["band_centre"],
                                       m.float(), m)
    assert torch.equal(model.real_ct, expected)
    generated_rows = model.generated_mask[:, 0, :, 0].sum(dim=1)
    assert torch.equal(generated_rows, m.float())  # the band height is the generated height
    outside = model.generated_mask < 0.5
    assert torch.equal(model.fake_ct[outside], model.real_ct[outside])
    assert torch.equal(model.fake_ct[~outside], (model.generated_ct * model.generated_mask)[~outside])
    assert torch.equal(model.output.fine_height, m.float())


def test_perceptual_and_style_use_local_vgg_weights(tmp_path: Path) -> None:
    from torchvision.models import vgg19

    torch.manual_seed(0)
    path = tmp_path / "vgg19.pth"
    torch.save(vgg19(weights=None).state_dict(), path)  # random weights: stands in for a local file
    vgg = VGG19Features(torch.load(path, weights_only=True))
    real = torch.rand(1, 1, 32, 32) * 2 - 1
    fake = (real + 0.3 * torch.randn_like(real)).clamp(-1, 1).requires_grad_(True)
    perceptual, style = perceptual_and_style_losses(vgg, fake, real)
    assert perceptual > 0 and style > 0
    (perceptual + style).backward()
    assert fake.grad.abs().sum() > 0
    same_p, same_s = perceptual_and_style_losses(vgg, real, real)
    assert float(same_p) == 0.0 and float(same_s) == 0.0
    model = models.create_model(aot_options("--vgg19_weights", str(path)))
    assert model.vgg is not None and "perceptual" in model.loss_names


def test_missing_vgg_weights_say_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = models.create_model(aot_options("--vgg19_weights", str(tmp_path / "absent.pth")))
    lines = [line for line in capsys.readouterr().out.splitlines() if "perceptual and style losses off" in line]
    assert model.vgg is None and len(lines) == 1 and "absent.pth not found" in lines[0]
    assert "perceptual" not in model.loss_names


# ---------------------------------------------------------------------------------------------- train.py
@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_synthetic_cohort(tmp_path_factory.mktemp("aot_cohort"))


def run_aot(cohort: tuple[Path, Path], checkpoints: Path, name: str, *extra: str) -> int:
    dataroot, split = cohort
    return train.main(["--dataroot", str(dataroot), "--split_json", str(split), "--name", name,
                       "--checkpoints_dir", str(checkpoints), *TINY, *AOT_TINY, *extra])


def test_resumed_aotgan_run_equals_uninterrupted(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    deterministic = ["--deterministic", "--val_freq", "0"]
    assert run_aot(cohort, tmp_path, "full", *deterministic) == 0
    assert run_aot(cohort, tmp_path, "cut", *deterministic, "--max_steps", "3", "--save_latest_freq", "1",
                   "--save_by_iter") == 0
    full = load_checkpoint(tmp_path / "full" / "latest.pth")
    assert set(full["model"]["nets"]) == {"G", "D"} and set(full["model"]["scalers"]) == {"G", "D"}
    assert full["options"]["model"] == "aotgan"
    assert run_aot(cohort, tmp_path, "cut", *deterministic, "--continue_train", "--load_iter", "3") == 0
    resumed = load_checkpoint(tmp_path / "cut" / "latest.pth")
    assert resumed["progress"] == full["progress"]
    assert_same_weights(full["model"]["nets"], resumed["model"]["nets"])
    assert loss_rows(tmp_path / "cut") == loss_rows(tmp_path / "full")


def test_aotgan_checkpoint_drives_the_iterative_synthesis(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    import eval_3d_sagittal_twostage as synthesis_script
    from data.crops import load_crop

    assert run_aot(cohort, tmp_path, "aot", "--val_freq", "0") == 0
    loaded = load_generator(tmp_path / "aot" / "latest.pth", plane="sagittal")
    assert isinstance(loaded.generator, AOTSynthesisGenerator)
    runner = GeneratorRunner(loaded.generator, batch_size=0)
    masked = np.zeros((2, 64, 64), dtype=np.float32)
    _, _, height = runner(masked, np.zeros(2), masked, masked, 20)
    assert height.tolist() == [20.0, 20.0]
    dataroot, split = cohort
    results = tmp_path / "results"
    assert synthesis_script.main(["--dataroot", str(dataroot), "--name", "aot", "--checkpoints_dir", str(tmp_path),
                                  "--results_dir", str(results), "--gpu_ids", "-1", "--no_progress",
                                  "--split_json", str(split)]) == 0
    key = "syn001_20"
    crop = load_crop(dataroot, key)
    import nibabel as nib

    fake_ct = np.asarray(nib.load(results / "aot" / "CT_fake" / f"{key}.nii.gz").dataobj)
    fake_label = np.asarray(nib.load(results / "aot" / "label_fake" / f"{key}.nii.gz").dataobj)
    assert fake_label.shape == crop.label_map.shape
    centre = crop.label_map.shape[2] // 2
    assert not np.array_equal(fake_ct[:, :, centre], crop.ct_hu[:, :, centre])  # the centre slice was synthesized
    assert np.array_equal(fake_ct[:, :, 0], crop.ct_hu[:, :, 0])  # no target there: the crop is kept
    shutil.rmtree(results)


@pytest.mark.slow
def test_two_process_gloo_ddp_aotgan_gives_identical_weights(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    saved, rank0 = train_two_gloo_ranks(*cohort, tmp_path, [*TINY, *AOT_TINY])
    assert saved["progress"]["total_iters"] == 2
    assert_same_weights(saved["model"]["nets"], rank0["nets"])
