"""Mixed precision (models.amp): --amp_dtype, bf16 autocast on CPU, one GradScaler per network."""

from __future__ import annotations

import argparse

import pytest
import torch

from models import healthivert_model
from models.amp import AmpSettings, MixedPrecision, add_amp_options, resolve_amp_dtype
from models.synthetic import synthetic_batch
from tests.models.test_models import build_model


def test_amp_dtype_resolution_and_errors() -> None:
    cpu = torch.device("cpu")
    assert resolve_amp_dtype(False, "fp16", cpu) is None
    assert resolve_amp_dtype(True, "auto", cpu) == torch.bfloat16
    assert resolve_amp_dtype(True, "bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="--amp_dtype fp16 needs a GPU"):
        resolve_amp_dtype(True, "fp16", cpu)


def test_amp_settings_take_the_flags_and_absent_ones_keep_their_default() -> None:
    parser = add_amp_options(argparse.ArgumentParser())
    assert AmpSettings.from_options(parser.parse_args([])) == AmpSettings(False, "auto")
    assert AmpSettings.from_options(parser.parse_args(["--amp", "--amp_dtype", "bf16"])) == AmpSettings(True, "bf16")
    assert AmpSettings.from_options({}) == AmpSettings()  # a checkpoint saved before --amp existed
    cpu = torch.device("cpu")
    assert MixedPrecision.from_options({}, cpu) == MixedPrecision(cpu, None)
    assert MixedPrecision.from_options(parser.parse_args(["--amp"]), cpu).dtype == torch.bfloat16  # auto on CPU


def test_cpu_amp_runs_generator_and_all_three_discriminators_in_bf16_with_fp32_weights() -> None:
    torch.manual_seed(0)
    model = build_model("--amp")
    seen: dict[str, torch.dtype] = {}

    def record(name: str):
        def hook(_module, _inputs, output) -> None:
            seen.setdefault(name, output.dtype)
        return hook

    for name in ("G", "D_1", "D_2", "D_3"):
        first_conv = next(m for m in getattr(model, "net" + name).modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.register_forward_hook(record(name))
    before = {name: p.detach().clone() for name, p in model.netD_1.named_parameters()}
    model.set_input(synthetic_batch(2, 64))
    model.optimize_parameters()
    assert seen == {name: torch.bfloat16 for name in ("G", "D_1", "D_2", "D_3")}
    assert all(p.dtype == torch.float32 for net in model.networks().values() for p in net.parameters())
    assert any(not torch.equal(p, before[n]) for n, p in model.netD_1.named_parameters())  # D_1 was updated
    assert all(torch.isfinite(torch.tensor(v)) for v in model.get_current_losses().values())


def test_each_network_has_its_own_loss_scale() -> None:
    """An overflowing generator step halves the generator's scale only; the discriminators still step.

    float16 autocast on the CPU stands in for a GPU here (GradScaler works on both)."""
    torch.manual_seed(0)
    model = build_model("--lambda_L1", "inf")  # the generator loss overflows
    model.precision = MixedPrecision(torch.device("cpu"), torch.float16)
    scalers = model.grad_scalers()
    assert len({id(s) for s in scalers.values()}) == 4
    initial = scalers["G"].get_scale()
    generator_before = [p.detach().clone() for p in model.netG.parameters()]
    critic_before = [p.detach().clone() for p in model.netD_2.parameters()]
    model.set_input(synthetic_batch(2, 64))
    model.optimize_parameters()
    assert scalers["G"].get_scale() == initial / 2  # skipped step
    assert all(scalers[name].get_scale() == initial for name in ("D_1", "D_2", "D_3"))
    assert all(torch.equal(p, q) for p, q in zip(model.netG.parameters(), generator_before))
    assert any(not torch.equal(p, q) for p, q in zip(model.netD_2.parameters(), critic_before))
    state = model.state_dict()["scalers"]
    assert state["G"]["scale"] == initial / 2 and state["D_3"]["scale"] == initial


def test_training_forward_does_not_colour_code_the_attention_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow image (a GPU sync for its maximum) is made only when visuals are asked for."""
    calls = []
    real = healthivert_model.flow_to_rgb
    monkeypatch.setattr(healthivert_model, "flow_to_rgb", lambda flow: calls.append(1) or real(flow))
    model = build_model()
    model.set_input(synthetic_batch(2, 64))
    model.optimize_parameters()
    assert calls == []
    flow = model.get_current_visuals()["attention_flow"]
    assert calls == [1] and flow.shape == (2, 3, 64, 64) and flow.min() >= -1 and flow.max() <= 1
