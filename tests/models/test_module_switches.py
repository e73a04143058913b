"""Ablation switches (models/module_switches.py): each one changes exactly what it says, in training and
at synthesis, and travels in the checkpoint options."""

from __future__ import annotations

import argparse

import numpy as np
import torch

import models.synthesis.plane as synthesis_plane
import train
from models import training
from models.composition import compose_height_adaptive
from models.module_switches import ModuleSwitches
from models.synthesis.plane import synthesize_plane
from models.synthesis.runner import GeneratorRunner
from models.synthesis.settings import SynthesisSettings, settings_for
from models.synthetic import synthetic_batch
from tests.models.test_models import build_model
from tests.models.test_synthesis import TARGET, RecordingGenerator, ToyGenerator, crop_arrays
from tests.scripts.test_train import TINY
from tests.synthetic_crops import WIDE_WINDOW, write_synthetic_cohort
from util.checkpoint import load_checkpoint


def cam_spy(model) -> list[torch.Tensor]:
    """Record the attention map (4th positional input) of every generator call."""
    seen: list[torch.Tensor] = []
    model.netG.register_forward_pre_hook(lambda module, args: seen.append(args[3].detach().clone()))
    return seen


def forward_terms(*flags: str):
    torch.manual_seed(0)
    model = build_model(*flags)
    model.set_input(synthetic_batch(2, 64, seed=1))
    torch.manual_seed(1)
    model.forward()
    return model, model.generator_loss_terms()


def test_no_hgam_gives_the_generator_a_zero_map() -> None:
    for flags, zero in (((), False), (("--no_hgam",), True)):
        torch.manual_seed(0)
        model = build_model(*flags)
        seen = cam_spy(model)
        model.set_input(synthetic_batch(2, 64, seed=1))
        assert model.cam.abs().sum() > 0  # the batch has a map
        model.forward()
        assert len(seen) == 1 and bool((seen[0] == 0).all()) is zero
        if not zero:
            assert torch.equal(seen[0], model.cam)


def test_no_eem_zeroes_the_edge_term_and_its_gradient_and_keeps_the_others() -> None:
    _, full = forward_terms()
    model, ablated = forward_terms("--no_eem")
    assert float(full["edge"].detach()) > 0 and float(ablated["edge"]) == 0.0
    assert not ablated["edge"].requires_grad  # no gradient contribution
    for name in full:
        if name != "edge":
            torch.testing.assert_close(ablated[name], full[name], msg=f"term {name} changed")
    total = model.generator_loss()
    torch.testing.assert_close(total, sum(v for k, v in full.items() if k != "edge"))


def test_no_shrm_composes_at_the_band_height_and_drops_the_height_terms() -> None:
    _, full = forward_terms()
    model, ablated = forward_terms("--no_shrm")
    assert float(full["h"].detach()) > 0 and float(ablated["h"]) == 0.0 and not ablated["h"].requires_grad
    out = model.output
    band = model.mask_height_px
    torch.testing.assert_close(model.fake_ct, model.compose(model.real_ct, out.fine_ct, band))
    torch.testing.assert_close(model.fake_ct_coarse, model.compose(model.real_ct, out.coarse_ct, band))
    # the predicted heights differ from the band's, so the composition really changed
    assert not torch.allclose(out.fine_height, band)
    assert not torch.allclose(model.fake_ct, model.compose(model.real_ct, out.fine_ct, out.fine_height))
    for name in ("G_Dice", "coarse_Dice", "edge"):  # terms that do not read the composition are unchanged
        torch.testing.assert_close(ablated[name], full[name])


def test_no_iterative_synthesizes_only_the_target() -> None:
    ct, label_map, _ = crop_arrays()
    generator = RecordingGenerator([0.5])
    settings = SynthesisSettings(16, WIDE_WINDOW, switches=ModuleSwitches(iterative=False))
    result = synthesize_plane(GeneratorRunner(generator, batch_size=0), ct, label_map, None, TARGET, "sagittal",
                              settings)
    assert len(generator.inputs) == 1 and [(s.role, s.label) for s in result.steps] == [("target", TARGET)]
    # the one call masks the target's rows, in every slice: never a neighbour's
    target_rows = np.flatnonzero((label_map == TARGET).any(axis=(1, 2)))
    for band in generator.inputs[0][1]:
        rows = np.flatnonzero(band.any(axis=1))
        assert rows.min() <= target_rows.mean() <= rows.max()
    iterative = RecordingGenerator([0.5, 0.6, 0.7])
    synthesize_plane(GeneratorRunner(iterative, batch_size=0), ct, label_map, None, TARGET, "sagittal",
                     SynthesisSettings(16, WIDE_WINDOW))
    assert len(iterative.inputs) == 3


class CamHeightSpy(ToyGenerator):
    """ToyGenerator that records the attention map it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.cams: list[np.ndarray] = []

    def forward(self, masked_ct, offset_plane, band_mask, cam, mask_height_px=None):
        self.cams.append(cam.numpy().copy())
        return super().forward(masked_ct, offset_plane, band_mask, cam, mask_height_px)


def test_synthesis_honours_the_checkpoint_switches(monkeypatch) -> None:
    fallback = argparse.Namespace(protocol=None, no_iterative=True)
    settings = settings_for({"mask_height": 16.0, "no_hgam": True, "no_shrm": True}, 1.0, fallback)
    assert settings.switches == ModuleSwitches(eem=True, shrm=False, hgam=False, iterative=False)
    assert settings_for({"mask_height": 16.0}, 1.0).switches == ModuleSwitches()
    heights: list[np.ndarray] = []

    def recording_compose(original, generated, top, bottom, centre, generated_height, mask_height_px=None):
        heights.append(generated_height.numpy().copy())
        return compose_height_adaptive(original, generated, top, bottom, centre, generated_height, mask_height_px)

    monkeypatch.setattr(synthesis_plane, "compose_height_adaptive", recording_compose)
    ct, label_map, cam = crop_arrays()
    for name, switches in (("full", ModuleSwitches(iterative=False)),
                           ("no_hgam", ModuleSwitches(hgam=False, iterative=False)),
                           ("no_shrm", ModuleSwitches(shrm=False, iterative=False))):
        spy = CamHeightSpy()
        heights.clear()
        synthesize_plane(GeneratorRunner(spy, batch_size=0), ct, label_map, cam, TARGET, "sagittal",
                         SynthesisSettings(16, WIDE_WINDOW, switches=switches))
        assert bool(np.abs(spy.cams[0]).sum() == 0) is (name == "no_hgam")
        assert len(heights) == 1
        # ToyGenerator predicts heights well below the band's 16 rows; without SHRM the band height is composed
        assert bool(np.all(heights[0] == 16.0)) is (name == "no_shrm")


def test_switches_are_saved_in_the_checkpoint_options(tmp_path) -> None:
    dataroot, split = write_synthetic_cohort(tmp_path / "cohort")
    assert train.main(["--dataroot", str(dataroot), "--split_json", str(split), "--name", "ablated",
                       "--checkpoints_dir", str(tmp_path / "ck"), *TINY, "--no_hgam", "--no_eem"]) == 0
    options = load_checkpoint(tmp_path / "ck" / "ablated" / "latest.pth")["options"]
    assert options["no_hgam"] is True and options["no_eem"] is True and options["no_shrm"] is False
    assert ModuleSwitches.from_options(options) == ModuleSwitches(eem=False, hgam=False)


def test_resume_refuses_other_switches() -> None:
    saved = {"no_hgam": True, "no_eem": False}
    assert training.option_differences(saved, argparse.Namespace(no_hgam=False, no_eem=False)) == \
        ["--no_hgam True -> False"]
    assert training.option_differences({}, argparse.Namespace(no_hgam=True)) == []  # older checkpoints: no record
