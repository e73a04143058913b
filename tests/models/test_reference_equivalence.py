"""Published-weights import, --protocol reference, and the equivalence check on the shared fixtures."""

from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from data.masking import extend_band_rows, make_masked_slices
from models.import_reference_weights import import_reference_weights, reference_key_map
from models.import_reference_weights import main as import_main
from models.networks import HealthiVertGenerator
from models.synthesis.checkpoints import load_generator
from models.synthesis.truncation import reference_float_grey, truncate_to_grey
from models.synthetic import synthetic_batch
from tests.paths import REFERENCE_DIR, REPO_ROOT
from util.protocol import PROTOCOLS, get_protocol

needs_fixtures = pytest.mark.skipif(not (REFERENCE_DIR / "generator" / "latest_net_G.pth").is_file(),
                                    reason="reference fixtures (../shared/data/reference) not available")


def published_state_dict(generator: HealthiVertGenerator) -> OrderedDict:
    """Our generator's weights under the published code's key names (the inverse of the importer's map)."""
    ours = generator.state_dict()
    return OrderedDict((reference, ours[key].clone()) for reference, key in reference_key_map().items())


def random_generator(ngf: int = 4, seed: int = 0) -> HealthiVertGenerator:
    torch.manual_seed(seed)
    generator = HealthiVertGenerator(ngf)
    generator.train()
    with torch.no_grad():  # a few power iterations so u and v are not their initial values
        for _ in range(3):
            generator(torch.rand(1, 1, 32, 32), torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32),
                      torch.zeros(1, 1, 32, 32))
    return generator.eval()


def generator_inputs(seed: int = 1, size: int = 32) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    masked = torch.rand(2, 1, size, size, generator=gen) * 2 - 1
    band = torch.zeros(2, 1, size, size)
    band[0, :, 8:16], band[1, :, 12:20] = 1.0, 1.0
    masked = torch.where(band > 0, torch.tensor(-1.0), masked)
    return masked, torch.full((2, 1, size, size), 0.25), band, torch.rand(2, 1, size, size, generator=gen)


# ----------------------------------------------------------------------------- importer


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "module_prefix"])
def test_import_round_trip_gives_the_same_network(tmp_path: Path, wrap: str) -> None:
    generator = random_generator()
    state = published_state_dict(generator)
    assert len(state) == len(generator.state_dict()) == len(reference_key_map())
    if wrap == "state_dict":
        state = {"state_dict": state, "epoch": torch.tensor(3)}
    elif wrap == "module_prefix":
        state = OrderedDict((f"module.{key}", value) for key, value in state.items())
    weights = tmp_path / "latest_net_G.pth"
    torch.save(state, weights)
    checkpoint = import_reference_weights(weights, "imported", tmp_path / "checkpoints")
    assert checkpoint == tmp_path / "checkpoints" / "imported" / "latest.pth"
    loaded = load_generator(checkpoint)
    assert loaded.options["ngf"] == 4  # read from the file
    inputs = generator_inputs()
    with torch.no_grad():
        expected, got = generator(*inputs), loaded.generator(*inputs)
    for name in ("coarse_ct", "fine_ct", "fine_target_seg", "fine_height"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=0, atol=1e-6)


def test_import_copies_spectral_norm_vectors(tmp_path: Path) -> None:
    """The normalised weight uses the stored u and v: changing v in the file changes the output."""
    generator = random_generator()
    state = published_state_dict(generator)
    key = "fine_generator.allconv17.conv.weight_v"
    state[key] = torch.flip(state[key], dims=[0])
    torch.save(state, tmp_path / "w.pth")
    loaded = load_generator(import_reference_weights(tmp_path / "w.pth", "n", tmp_path))
    with torch.no_grad():
        assert not torch.allclose(loaded.generator(*generator_inputs()).fine_ct, generator(*generator_inputs()).fine_ct)


def test_import_errors_name_the_file_and_the_problem(tmp_path: Path, capsys) -> None:
    state = published_state_dict(random_generator())
    partial = OrderedDict(state)
    del partial["coarse_generator.conv17.conv.bias"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth: 1 of 192 generator keys missing \(e\.g\. "
                                         r"coarse_generator\.conv17\.conv\.bias\)"):
        import_reference_weights(tmp_path / "partial.pth", "n", tmp_path / "out")
    extra = OrderedDict(state, **{"coarse_generator.conv99.conv.bias": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"1 unexpected keys \(e\.g\. coarse_generator\.conv99\.conv\.bias\)"):
        import_reference_weights(tmp_path / "extra.pth", "n", tmp_path / "out")
    torch.save(state, tmp_path / "ngf4.pth")
    with pytest.raises(ValueError, match=r"ngf4\.pth: coarse_generator\.conv1\.conv\.bias has shape "
                                         r"\(4,\), expected \(8,\) for --ngf 8"):
        import_reference_weights(tmp_path / "ngf4.pth", "n", tmp_path / "out", ngf=8)
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth: not a generator state_dict"):
        import_reference_weights(tmp_path / "list.pth", "n", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written for a bad file
    assert import_main(["--weights", str(tmp_path / "missing.pth"), "--name", "n",
                        "--checkpoints_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.pth: generator weights not found" in err


# ----------------------------------------------------------------------------- protocol


def test_protocol_is_one_flag_recorded_in_the_options() -> None:
    assert get_protocol(None) is PROTOCOLS["healthivert"]
    with pytest.raises(ValueError, match="unknown protocol 'paper'"):
        get_protocol("paper")
    from options.train_options import TrainOptions

    opt = TrainOptions().parse(["--dataroot", ".", "--protocol", "reference"], save=False)
    assert opt.protocol == "reference"
    with pytest.raises(SystemExit):
        TrainOptions().parse(["--dataroot", ".", "--protocol", "paper"], save=False)


def test_reference_l1_is_divided_by_the_batch_size() -> None:
    losses = {}
    for protocol in ("healthivert", "reference"):
        parser = argparse.ArgumentParser()
        models.get_option_setter("healthivert")(parser, True)
        opt = parser.parse_args(["--ngf", "4", "--ndf", "8"])
        opt.isTrain, opt.gpu_ids, opt.checkpoints_dir, opt.name, opt.protocol = True, [], "ck", "t", protocol
        torch.manual_seed(0)
        model = models.create_model(opt)
        model.set_input(synthetic_batch(3, 32))
        model.forward()
        losses[protocol] = model.generator_loss_terms()["G_L1"]
    torch.testing.assert_close(losses["reference"], losses["healthivert"] / 3)


def test_inference_mask_has_one_extra_row_except_at_the_bottom_border() -> None:
    labels = np.zeros((2, 64, 16), dtype=np.int64)
    labels[0, 20:32, 4:12] = 20  # interior
    labels[1, 52:63, 4:12] = 20  # band clamped to the bottom border
    batch = make_masked_slices(np.zeros(labels.shape, np.float32), labels, 20, None, 16, 1)
    extended = extend_band_rows(batch.band_mask, batch.band_top, 16)
    assert extended[0, :, 0].sum() == 17 and extended[0, batch.band_top[0] + 16, 0] == 1
    assert extended[1, :, 0].sum() == 16
    assert np.all(batch.masked_ct[0, batch.band_top[0] + 16] != -1.0)  # the CT band stays 16 rows


def test_grey_truncation_drops_a_level_where_the_reference_float32_does() -> None:
    levels = np.arange(256, dtype=np.float64)
    # the reference: uint8 -> /255 -> Normalize(0.5, 0.5) -> (x + 1) * 127.5, all float32 (torch)
    normalised = (torch.from_numpy(levels.astype(np.uint8)).float() / 255.0 - 0.5) / 0.5
    held = ((normalised.numpy() + np.float32(1.0)) * np.float32(127.5)).astype(np.float64)
    np.testing.assert_array_equal(reference_float_grey(levels + 1e-6), held)
    hu = levels / 255.0 * 1100.0 - 300.0
    truncated_first, _ = truncate_to_grey(hu[None], None, (-300.0, 800.0))
    truncated_again, _ = truncate_to_grey(hu[None], None, (-300.0, 800.0), np.array([True]))
    grey_first = np.rint((truncated_first[0] + 300.0) / 1100.0 * 255.0)
    grey_again = np.rint((truncated_again[0] + 300.0) / 1100.0 * 255.0)
    np.testing.assert_array_equal(grey_first, levels)  # a crop's integer levels survive the first step
    np.testing.assert_array_equal(grey_again, np.floor(held))  # a step's output loses what float32 loses
    assert (grey_again < levels).any()


# ----------------------------------------------------------------------------- shared fixtures


@needs_fixtures
def test_generator_masking_and_composition_match_the_published_code(tmp_path: Path) -> None:
    from benchmarks.reference_equivalence import composition_rows, generator_rows, masking_rows

    rows, generator = generator_rows(REFERENCE_DIR, tmp_path)
    rows += masking_rows(REFERENCE_DIR) + composition_rows(REFERENCE_DIR, generator)
    failed = [r for r in rows if not r["passed"]]
    assert not failed, failed
    assert any("sample-0-mask bug" in r["item"] for r in rows)


@pytest.mark.slow
@needs_fixtures
def test_reference_equivalence_script_passes_on_the_shared_fixtures(capsys) -> None:
    from benchmarks.reference_equivalence import main

    assert main(["--fixtures", str(REFERENCE_DIR)]) == 0
    out = capsys.readouterr().out
    assert "iterative: CT_fake grey levels" in out and "FAIL" not in out


# ----------------------------------------------------------------------------- published command lines


def test_published_model_and_direction_flags() -> None:
    from options.train_options import TrainOptions

    opt = TrainOptions().parse(["--dataroot", ".", "--model", "pix2pix", "--direction", "BtoA"], save=False)
    assert models.find_model_using_name(opt.model) is models.HealthiVertModel
    with pytest.raises(SystemExit, match=r"^error: --direction AtoB: only BtoA exists"):
        TrainOptions().parse(["--dataroot", ".", "--direction", "AtoB"], save=False)


@pytest.mark.parametrize("script", ["straighten/location_json_local.py", "straighten/straighten_mask_3d.py"])
def test_preprocessing_defaults_to_the_published_dataset_folder(tmp_path: Path, script: str) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(REPO_ROOT / script)], cwd=tmp_path, capture_output=True, text=True,
                          check=False, encoding="utf-8")
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: dataset/raw: raw data folder not found (give --root DIR, the folder "
                                   "holding raw/<case>/)")


def test_centroids_run_without_flags_on_the_published_layout(tmp_path: Path, phantom_cohort_dir: Path) -> None:
    """``python straighten/location_json_local.py`` in a folder holding ./dataset/raw/<case>/ (one case)."""
    import shutil
    import subprocess
    import sys

    case = min(p for p in (phantom_cohort_dir / "raw").iterdir() if p.is_dir())
    shutil.copytree(case, tmp_path / "dataset" / "raw" / case.name)

    done = subprocess.run([sys.executable, str(REPO_ROOT / "straighten/location_json_local.py"), "--quiet"],
                          cwd=tmp_path, capture_output=True, encoding="utf-8", check=False)
    assert done.returncode == 0, done.stderr
    centroids = json.loads((tmp_path / "dataset" / "raw" / case.name / f"{case.name}.json").read_text(encoding="utf-8"))
    truth = json.loads((case / f"{case.name}_truth.json").read_text(encoding="utf-8"))
    assert sorted(c["label"] for c in centroids) == sorted(v["label"] for v in truth["vertebrae"])


def test_imported_weights_synthesize_through_the_cli_with_either_protocol(tmp_path: Path) -> None:
    import eval_3d_sagittal_twostage as script
    from data.crops import crop_affine, write_crop
    from data.image_io import load_ct, load_mask
    from data.labels import split_key
    from models.synthesis.plane import synthesize_plane
    from models.synthesis.run_settings import SynthesisRunSettings
    from models.synthesis.runner import GeneratorRunner
    from models.synthesis.settings import settings_for
    from tests.synthetic_crops import CROP_SIZE, HEIGHTS, make_crop_arrays

    torch.manual_seed(0)
    torch.save(published_state_dict(random_generator()), tmp_path / "latest_net_G.pth")
    assert import_main(["--weights", str(tmp_path / "latest_net_G.pth"), "--name", "published",
                        "--checkpoints_dir", str(tmp_path / "checkpoints")]) == 0
    ct, label_map = make_crop_arrays(sorted(HEIGHTS), 20)
    key = split_key("syn001", 20)
    write_crop(tmp_path / "straightened", key, ct, label_map, crop_affine((1.0, 1.0, 1.0), np.zeros(3), CROP_SIZE),
               {"case": "syn001", "label": 20, "crop_size": list(CROP_SIZE), "spacing_mm": [1.0, 1.0, 1.0],
                "axes": "IPL", "has_ct": True})
    outputs = {}
    for protocol in ("healthivert", "reference"):
        argv = ["--dataroot", str(tmp_path / "straightened"), "--name", "published", "--checkpoints_dir",
                str(tmp_path / "checkpoints"), "--results_dir", str(tmp_path / protocol), "--gpu_ids", "-1",
                "--no_progress", "--protocol", protocol]
        with pytest.warns(UserWarning, match="no --cam_dir"):
            assert script.main(argv) == 0
        outputs[protocol] = (load_ct(tmp_path / protocol / "published" / "CT_fake" / f"{key}.nii.gz").array,
                             load_mask(tmp_path / protocol / "published" / "label_fake" / f"{key}.nii.gz").array)
    opt = script.parse_options(argv)
    loaded = load_generator(tmp_path / "checkpoints" / "published" / "latest.pth")
    settings = settings_for(loaded.options, 1.0, SynthesisRunSettings.from_options(opt).flags)
    assert settings.protocol is PROTOCOLS["reference"] and settings.mask_height_px == 40
    expected = synthesize_plane(GeneratorRunner(loaded.generator), ct.astype(np.float32), label_map, None, 20,
                                "sagittal", settings)
    np.testing.assert_array_equal(outputs["reference"][1], expected.label_map)
    np.testing.assert_allclose(outputs["reference"][0], np.rint(expected.ct_hu), atol=0.5)
    assert not np.array_equal(outputs["reference"][0], outputs["healthivert"][0])


@needs_fixtures
def test_checker_fails_on_a_fixture_set_that_disagrees(tmp_path: Path) -> None:
    """The checker reads its expectations from the files: a perturbed output makes exactly that row fail."""
    import shutil

    from benchmarks.reference_equivalence import generator_rows

    fixtures = tmp_path / "fixtures"
    shutil.copytree(REFERENCE_DIR / "generator", fixtures / "generator")
    outputs = dict(np.load(fixtures / "generator" / "outputs.npz"))
    outputs["fine_seg"] = outputs["fine_seg"] + np.float32(1e-3)
    np.savez(fixtures / "generator" / "outputs.npz", **outputs)
    rows, _ = generator_rows(fixtures, tmp_path / "checkpoints")
    verdicts = {r["item"]: r["passed"] for r in rows}
    assert not verdicts["generator fine_seg, batch 1"] and verdicts["generator fine_ct, batch 1"]
    assert not any(passed for item, passed in verdicts.items() if item.startswith("generator, all"))


def test_published_training_command_runs_on_the_published_layout(tmp_path: Path, monkeypatch) -> None:
    """``python train.py --dataroot ./dataset/straightened --name HealthiVert_experiment --model pix2pix
    --direction BtoA --batch_size 16 --n_epochs 1000`` (then tiny sizes so it takes seconds), in a folder
    laid out as the published README: ./dataset/straightened/{CT,label}/, ./dataset/vertebra_data.json."""
    import train
    from tests.synthetic_crops import write_synthetic_cohort
    from util.checkpoint import load_checkpoint

    write_synthetic_cohort(tmp_path / "dataset")
    monkeypatch.chdir(tmp_path)
    published = ["--dataroot", "./dataset/straightened", "--name", "HealthiVert_experiment", "--model", "pix2pix",
                 "--direction", "BtoA", "--batch_size", "16", "--n_epochs", "1000"]
    tiny = ["--gpu_ids", "-1", "--num_threads", "0", "--ngf", "2", "--ndf", "4", "--mask_height", "16",
            "--no_progress", "--batch_size", "2", "--max_dataset_size", "2", "--n_epochs", "1", "--n_epochs_decay", "0"]
    with pytest.warns(UserWarning, match="no --cam_dir"):
        assert train.main(published + tiny) == 0
    checkpoint = load_checkpoint(Path("checkpoints") / "HealthiVert_experiment" / "latest.pth")
    options = checkpoint["options"]
    assert (options["model"], options["direction"], options["protocol"]) == ("pix2pix", "BtoA", "healthivert")
    assert Path(options["dataroot"]) == Path("./dataset/straightened")
    assert checkpoint["progress"]["total_iters"] >= 1
    assert all(torch.isfinite(t).all() for t in checkpoint["model"]["nets"]["G"].values())
