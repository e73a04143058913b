"""One model's synthesis settings (models/synthesis/settings.py): band rows from mm, thresholds in mm², fallbacks."""

from __future__ import annotations

import argparse

import pytest

from data.image_io import DEFAULT_WINDOW_HU
from data.masking import MIN_COMPONENT_PX
from models.synthesis.settings import NEIGHBOUR_MIN_PX, neighbour_min_pixels, plane_pixel_area_mm2, settings_for
from util.protocol import PROTOCOLS


def test_neighbour_threshold_is_an_area() -> None:
    assert neighbour_min_pixels(1.0) == NEIGHBOUR_MIN_PX == 200
    assert neighbour_min_pixels(0.25) == 800
    assert plane_pixel_area_mm2((2.0, 0.5, 0.8), "sagittal") == 1.0
    assert plane_pixel_area_mm2((2.0, 0.5, 0.8), "coronal") == pytest.approx(1.6)
    assert settings_for({}, 1.0, pixel_area_mm2=0.5).neighbour_min_px == 400
    assert settings_for({}, 1.0).neighbour_min_px == NEIGHBOUR_MIN_PX
    with pytest.raises(ValueError, match="pixel area must be positive"):
        neighbour_min_pixels(0.0)


def test_reference_protocol_counts_200_pixels_at_any_spacing() -> None:
    reference = argparse.Namespace(protocol="reference")
    assert settings_for({}, 1.0, reference, pixel_area_mm2=0.25).neighbour_min_px == NEIGHBOUR_MIN_PX
    assert settings_for({}, 1.0, reference).protocol is PROTOCOLS["reference"]


def test_band_height_is_the_checkpoints_millimetres_in_rows_of_the_crop() -> None:
    assert settings_for({"mask_height": 40.0}, 1.0).mask_height_px == 40
    assert settings_for({"mask_height": 40.0}, 2.5).mask_height_px == 16
    assert settings_for({"mask_height": 40.0}, 0.75).mask_height_px == 53  # round(53.3)


def test_checkpoint_options_win_over_the_run_flags_which_win_over_the_defaults() -> None:
    run = argparse.Namespace(mask_height=20.0, hu_window=[-500.0, 500.0], min_component_px=10, protocol=None)
    from_checkpoint = settings_for({"mask_height": 30.0, "hu_window": [-1000, 2000], "min_component_px": 5}, 1.0, run)
    assert (from_checkpoint.mask_height_px, from_checkpoint.hu_window, from_checkpoint.min_component_px) == \
        (30, (-1000.0, 2000.0), 5)
    from_run = settings_for({}, 1.0, run)
    assert (from_run.mask_height_px, from_run.hu_window, from_run.min_component_px) == (20, (-500.0, 500.0), 10)
    default = settings_for({}, 1.0)
    assert (default.mask_height_px, default.hu_window, default.min_component_px) == \
        (40, tuple(map(float, DEFAULT_WINDOW_HU)), MIN_COMPONENT_PX)
    assert default.protocol is PROTOCOLS["healthivert"]
