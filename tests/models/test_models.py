"""HealthiVert generator, losses and training model on synthetic batches (CPU)."""

from __future__ import annotations

import argparse

import pytest
import torch

import models
from models.healthivert_model import band_rows, central_columns_mask
from models.losses import GANLoss, SobelEdges, dice_coefficient, gradient_penalty
from models.networks import ELU, HealthiVertGenerator, NLayerDiscriminator, _ELUFunction, count_parameters
from models.synthetic import synthetic_batch


def model_options(*argv: str, is_train: bool = True) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="healthivert")
    parser.add_argument("--gpu_ids", default="-1")
    parser.add_argument("--checkpoints_dir", default="checkpoints")
    parser.add_argument("--name", default="test")
    models.get_option_setter("healthivert")(parser, is_train)
    opt = parser.parse_args(list(argv))
    opt.isTrain = is_train
    return opt


def build_model(*argv: str, tmp_path=None) -> models.HealthiVertModel:
    opt = model_options("--ngf", "8", "--ndf", "8", *argv)
    if tmp_path is not None:
        opt.checkpoints_dir = str(tmp_path)
    model = models.create_model(opt)
    model.setup(opt)
    return model


# ---------------------------------------------------------------------------------------------- generator
def check_outputs(out, batch: int, size: int, mask_height: torch.Tensor) -> None:
    for name in ("coarse_ct", "fine_ct"):
        image = getattr(out, name)
        assert image.shape == (batch, 1, size, size)
        assert image.min() >= -1 and image.max() <= 1
    for name in ("coarse_neighbour_seg", "fine_target_seg"):
        image = getattr(out, name)
        assert image.shape == (batch, 1, size, size)
        assert image.min() >= 0 and image.max() <= 1
    for name in ("coarse_height", "fine_height"):
        height = getattr(out, name)
        assert height.shape == (batch,)
        assert (height > 0).all() and (height < mask_height).all()
    assert out.attention_flow.shape == (batch, 2, size, size)
    assert out.attention_flow.abs().max() <= size


@pytest.mark.parametrize("size", [64, 128])
def test_generator_shapes_and_ranges(size):
    torch.manual_seed(0)
    b = synthetic_batch(2, size)
    generator = HealthiVertGenerator(ngf=16, mask_height_px=size / 4).eval()  # eval: fixed spectral norms
    with torch.no_grad():
        out = generator(b["masked_ct"], b["offset_plane"], b["band_mask"], b["cam"])
        check_outputs(out, 2, size, torch.tensor(size / 4))
        doubled = generator(b["masked_ct"], b["offset_plane"], b["band_mask"], b["cam"], torch.tensor([1.0, 2.0]))
    # the height heads scale linearly with the (per-sample) band height
    assert torch.allclose(doubled.fine_height * torch.tensor([size / 4, size / 8]), out.fine_height, rtol=1e-5)


def test_generator_256_batch1_and_parameter_count():
    torch.manual_seed(0)
    generator = HealthiVertGenerator(ngf=16, mask_height_px=40)
    count = count_parameters(generator)
    print(f"HealthiVertGenerator(ngf=16): {count} parameters")
    assert abs(count - 0.99e6) / 0.99e6 < 0.01
    b = synthetic_batch(1, 256)
    with torch.no_grad():
        out = generator(b["masked_ct"], b["offset_plane"], b["band_mask"], b["cam"])
    check_outputs(out, 1, 256, torch.tensor(40.0))


def test_generator_rejects_bad_size_and_width():
    generator = HealthiVertGenerator(ngf=4)
    with pytest.raises(ValueError, match="divisible by 8"):
        generator(*(torch.zeros(1, 1, 60, 64) for _ in range(4)))
    with pytest.raises(ValueError, match="ngf"):
        HealthiVertGenerator(ngf=3)


def test_discriminator_is_70px_patchgan():
    net = NLayerDiscriminator(1, 64, 3)
    assert net(torch.zeros(1, 1, 256, 256)).shape == (1, 1, 30, 30)
    assert 2.7e6 < count_parameters(net) < 2.8e6


# ---------------------------------------------------------------------------------------------- losses
def test_sobel_dice_and_gan_losses():
    square = torch.zeros(1, 1, 16, 16)
    square[..., 4:12, 4:12] = 1
    edges = SobelEdges()(square)
    assert edges.max() == 1 and edges[..., 0, 0] == 0 and edges[..., 8, 8] == 0 and edges[..., 4, 8] == 1
    assert dice_coefficient(square, square) == pytest.approx(1.0)
    assert dice_coefficient(square, 1 - square) == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([[2.0, -1.0]])
    assert GANLoss("vanilla")(logits, True) == pytest.approx(float(-torch.nn.functional.logsigmoid(logits).mean()))
    assert GANLoss("lsgan")(logits, False) == pytest.approx(2.5)
    assert GANLoss("wgangp")(logits, True) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="gan_mode"):
        GANLoss("hinge")


def test_gradient_penalty_is_positive_and_differentiable():
    net = NLayerDiscriminator(1, 4, 3)
    penalty = gradient_penalty(net, torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64))
    penalty.backward()
    assert penalty > 0 and any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


# ---------------------------------------------------------------------------------------------- model
def test_registry_and_options():
    opt = model_options()
    assert (opt.ngf, opt.ndf, opt.n_layers_D, opt.gan_mode, opt.mask_height) == (16, 64, 3, "vanilla", 40.0)
    assert (opt.lambda_L1, opt.lambda_dice_coarse, opt.lambda_dice_fine, opt.lambda_edge, opt.lambda_height) == \
        (200.0, 10.0, 15.0, 800.0, 40.0)
    assert opt.lambda_GAN == pytest.approx(1 / 6) and (opt.lr, opt.beta1, opt.lr_policy) == (2e-4, 0.5, "linear")
    assert not opt.amp
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=1e-3)  # defined by the training options first: kept
    models.get_option_setter("HealthiVert")(parser, True)
    assert parser.parse_args([]).lr == 1e-3
    test_opt = model_options(is_train=False)
    assert not hasattr(test_opt, "lambda_L1")
    assert models.create_model(test_opt).model_names == ["G"]
    with pytest.raises(ValueError, match="unknown model"):
        models.get_option_setter("cycle_gan")


def test_model_choice_takes_the_model_flag_and_an_absent_one_keeps_the_default() -> None:
    from options.train_options import TrainOptions

    assert models.ModelChoice.from_options(TrainOptions().gather_options(["--dataroot", "."])).model == "healthivert"
    chosen = TrainOptions().gather_options(["--dataroot", ".", "--model", "aotgan"])
    assert models.ModelChoice.from_options(chosen).model == "aotgan"
    without_flag = model_options(is_train=False)
    del without_flag.model  # a parser built from the model's own flags only
    assert models.ModelChoice.from_options(without_flag) == models.ModelChoice()
    assert isinstance(models.create_model(without_flag), models.HealthiVertModel)


def test_model_step_visuals_and_losses():
    torch.manual_seed(0)
    model = build_model("--gan_mode", "wgangp")
    model.set_input(synthetic_batch(2, 64))
    model.optimize_parameters()
    losses = model.get_current_losses()
    assert set(model.loss_names) <= set(losses) and {"D_gp_1", "D_gp_2", "D_gp_3"} <= set(losses)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    visuals = model.get_current_visuals()
    assert visuals["fake_ct"].shape == (2, 1, 64, 64) and visuals["attention_flow"].shape == (2, 3, 64, 64)
    assert all(v.min() >= -1 and v.max() <= 1 for v in visuals.values())
    assert model.get_image_paths() == ["case0_20", "case1_20"]


def test_every_generator_loss_term_reaches_the_generator():
    torch.manual_seed(0)
    model = build_model()
    model.set_input(synthetic_batch(2, 64))
    model.forward()
    terms = model.generator_loss_terms()
    assert set(terms) == {"G_GAN_ct", "G_GAN_seg", "G_GAN_local", "G_L1", "coarse_Dice", "G_Dice", "edge", "h"}
    for name, term in terms.items():
        model.netG.zero_grad(set_to_none=True)
        term.backward(retain_graph=True)
        grad = sum(p.grad.abs().sum() for p in model.netG.parameters() if p.grad is not None)
        assert grad > 0, f"loss term {name} gives no gradient to the generator"


def test_few_steps_reduce_l1_and_height_losses():
    torch.manual_seed(0)
    model = build_model()
    batch = synthetic_batch(2, 64, seed=1, target_fills_band=True)

    def losses() -> tuple[float, float]:
        model.set_input(batch)
        with torch.no_grad():
            model.forward()
            terms = model.generator_loss_terms()
        return float(terms["G_L1"]), float(terms["h"])

    l1_before, height_before = losses()
    for _ in range(5):
        model.set_input(batch)
        model.optimize_parameters()
    l1_after, height_after = losses()
    assert l1_after < l1_before
    assert height_after < height_before


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(tmp_path=tmp_path)
    model.set_input(synthetic_batch(1, 64))
    model.optimize_parameters()
    model.update_learning_rate()
    model.save_networks("latest")
    state = model.state_dict()
    assert set(state["nets"]) == {"G", "D_1", "D_2", "D_3"} and set(state["optimizers"]) == set(state["nets"])
    other = build_model(tmp_path=tmp_path)
    other.load_networks("latest")
    for a, b in zip(model.netG.state_dict().values(), other.netG.state_dict().values()):
        assert torch.equal(a, b)
    other.load_state_dict(state)
    assert other.optimizer_G.state_dict()["state"].keys() == model.optimizer_G.state_dict()["state"].keys()
    with pytest.raises(FileNotFoundError, match="epoch 7"):
        other.load_networks(7)


def test_fast_elu_matches_torch_elu():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64).view(1, 1, 7, 143).requires_grad_(True)
    reference = torch.nn.functional.elu(x)
    ours = _ELUFunction.apply(x)
    assert torch.allclose(ours, reference, atol=1e-12)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x)
    (grad_reference,) = torch.autograd.grad(reference.sum(), x)
    assert torch.allclose(grad_ours, grad_reference, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_elu_module_matches_torch_elu_in_each_precision(dtype):
    leaf = torch.linspace(-6, 6, 1001).view(1, 1, 7, 143).to(dtype).requires_grad_(True)
    original = leaf.detach().clone()
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    from_leaf = ELU()(leaf)
    assert torch.equal(leaf.detach(), original)  # a caller's tensor is not overwritten
    assert torch.allclose(from_leaf.float(), torch.nn.functional.elu(original).float(), atol=tolerance)
    inner = leaf * 1.0  # a non-leaf, as a convolution's output: ELU works in place on it
    ours = ELU()(inner)
    reference = torch.nn.functional.elu(leaf * 1.0)
    assert torch.allclose(ours.float(), reference.float(), atol=tolerance)
    (grad_ours,) = torch.autograd.grad(ours.float().sum(), leaf)
    (grad_reference,) = torch.autograd.grad(reference.float().sum(), leaf)
    assert torch.allclose(grad_ours.float(), grad_reference.float(), atol=tolerance)


def test_band_rows_local_columns_and_amp_flag():
    batch = synthetic_batch(2, 64)
    assert band_rows(batch["band_mask"]).tolist() == [16.0, 16.0]
    assert central_columns_mask(torch.zeros(1, 1, 4, 64), 70).sum() == 64
    wide = central_columns_mask(torch.zeros(1, 1, 4, 256), 70)[0, 0, 0]
    assert wide.sum() == 70 and wide[93] == 1 and wide[92] == 0 and wide[162] == 1 and wide[163] == 0
    model = build_model("--amp")  # on CPU: bfloat16 autocast, float32 weights, no loss scaling
    assert model.precision.dtype == torch.bfloat16 and not model.precision.scales_loss
    assert all(p.dtype == torch.float32 for net in model.networks().values() for p in net.parameters())


def test_generator_band_rows_follow_the_crop_row_spacing() -> None:
    """--mask_height is mm; the generator's default band height is rows at the crops' row spacing (axis 0)."""
    from models.healthivert_model import HealthiVertSettings

    anisotropic = {"ngf": 4, "mask_height": 40.0, "crop_spacing_mm": [2.0, 1.0, 0.5]}
    generator = models.HealthiVertModel.inference_generator(anisotropic)
    assert generator.mask_height_px == 20.0
    assert HealthiVertSettings.from_options({**anisotropic, "crop_spacing_mm": [0.5, 1.0, 2.0]}).mask_height_px() == 80
    assert models.HealthiVertModel.inference_generator({"ngf": 4, "mask_height": 40.0}).mask_height_px == 40.0
    torch.manual_seed(0)
    inputs = [torch.rand(2, 1, 32, 32) * 2 - 1, torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32),
              torch.zeros(2, 1, 32, 32)]
    inputs[2][:, :, 6:26] = 1.0
    with torch.no_grad():
        out = generator.eval()(*inputs)  # no band rows given: the heads scale by the 20 rows
    assert float(out.fine_height.max()) < 20.0 and float(out.coarse_height.max()) < 20.0
    opt = model_options("--ngf", "4", "--ndf", "4", "--mask_height", "16")
    opt.crop_spacing_mm = [2.0, 1.0, 1.0]
    assert models.create_model(opt).netG.mask_height_px == 8.0
