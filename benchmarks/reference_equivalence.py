"""Check this implementation against golden data made by running the published HealthiVert-GAN code.

    python benchmarks/reference_equivalence.py [--fixtures ../shared/data/reference]

A fixture set (its README describes the format) holds generator weights in the published state_dict
format with inputs and per-sample outputs, masked samples of the published dataset, composition
cases, one iterative synthesis, RHLV pairs and an SVM table. Everything checked here is read from
the set's files and JSONs; nothing is specific to one set. Items:

- generator: the weights go through ``models/import_reference_weights.py`` and the checkpoint loader
  the synthesis uses; every recorded output (CT heads before and after the clamp, segmentations,
  heights in pixels, contextual-attention features) at batch 1 and with all samples in one batch,
  against the per-sample outputs (tolerance 1e-4). Our batch result must NOT be the published
  code's batch result where its sample-0-mask bug changes it. ``offset_flow`` is not compared: it is
  an argmax over near-equal scores rendered to colours (the README of the set says so).
- masking: ``data.masking`` on the sample's crop and slice (``slice_index``; the slice-offset ratio
  and the candidate range are checked against ours), after the published reader's uint8 truncation
  of CT and attention map, with the neighbour rule of ``data.aligned_dataset`` under
  ``--protocol reference`` (the patient's grade <= 1 vertebrae of the same phase, target included).
- composition: training cases through ``HealthiVertModel.compose`` and the local-discriminator
  crop, inference cases through ``models.synthesis.plane.synthesize_centred`` with a stand-in
  generator returning the recorded outputs, both under ``--protocol reference``. Inference cases
  whose height exceeds the band (a bug of the published code, kept fixed in both protocols) are
  compared on the generator inputs only.
- iterative: ``synthesize_plane`` with the imported generator under ``--protocol reference``, on
  the processed slices: CT within 2 grey levels, labels exact.
- RHLV and SVM: ``benchmarks/reference_equivalence_evaluation.py``.

Prints one table (item, max abs difference or agreement, tolerance, verdict); exit status 1 when
an item fails, 2 when the fixtures cannot be read.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from benchmarks.equivalence_table import Row, report
from benchmarks.reference_equivalence_evaluation import check_rhlv, check_svm
from data.aligned_dataset import healthy_labels_by_case
from data.image_io import DEFAULT_WINDOW_HU, window_hu
from data.masking import (
    CENTRAL_FRACTION,
    MIN_COMPONENT_PX,
    central_slice_range,
    make_masked_slice,
    plane_slab,
    slice_offset_ratio,
    target_slice_extent,
)
from models.healthivert_model import HealthiVertModel, central_columns_mask
from models.import_reference_weights import import_reference_weights
from models.networks import HealthiVertGenerator
from models.synthesis.checkpoints import load_generator
from models.synthesis.plane import synthesize_centred, synthesize_plane
from models.synthesis.runner import GeneratorRunner
from models.synthesis.settings import NEIGHBOUR_MIN_PX, SynthesisSettings
from models.synthesis.truncation import truncate_to_grey
from util.protocol import PROTOCOLS

DEFAULT_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference"
FLOAT_TOLERANCE = 1e-4
GREY_TOLERANCE = 2.0
MAX_HEALTHY_GRADE = 1
REFERENCE = PROTOCOLS["reference"]
# our generator output -> the fixture's key
GENERATOR_OUTPUTS = {"coarse_ct": "coarse_ct", "fine_ct": "fine_ct", "coarse_seg": "coarse_neighbour_seg",
                     "fine_seg": "fine_target_seg", "pred1_h_px": "coarse_height", "pred2_h_px": "fine_height"}
HOOKED_OUTPUTS = ("coarse_ct_preclamp", "fine_ct_preclamp", "contextual_attention")


def row(item: str, difference: float | str, tolerance: str, passed: bool) -> Row:
    """One line of the table (the keys the evaluation module's rows use too)."""
    return {"item": item, "difference": difference, "tolerance": tolerance, "passed": bool(passed)}


def float_row(item: str, difference: float, tolerance: float = FLOAT_TOLERANCE) -> Row:
    return row(item, float(difference), f"<= {tolerance:g}", difference <= tolerance)


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).max()) if a.size else 0.0


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def grey_to_hu(grey: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW_HU) -> np.ndarray:
    """Published crops store CT as grey 0..255 of the window; HU as float64 (the inverse of its window)."""
    low, high = window
    return np.asarray(grey, dtype=np.float64) / 255.0 * (high - low) + low


def hu_to_grey(hu: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW_HU) -> np.ndarray:
    """(window_hu + 1) * 127.5: the published code's grey output of a CT in [-1, 1]."""
    return (window_hu(hu, window).astype(np.float64) + 1.0) * 127.5


def reader_inputs(ct_grey: np.ndarray, cam: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The published reader's ``astype(np.uint8)`` of CT grey and attention map (HU float32, [0,1])."""
    return truncate_to_grey(grey_to_hu(ct_grey).astype(np.float32), cam, DEFAULT_WINDOW_HU)


# ----------------------------------------------------------------------------- generator


class HookedGenerator:
    """Our generator plus forward hooks recording the CT heads before the clamp and the attention output."""

    def __init__(self, generator: HealthiVertGenerator) -> None:
        self.generator = generator
        self.recorded: dict[str, torch.Tensor] = {}
        hooks: dict[str, tuple[torch.nn.Module, Callable[[Any], torch.Tensor]]] = {
            "coarse_ct_preclamp": (generator.coarse.ct_head, lambda out: out),
            "fine_ct_preclamp": (generator.fine.ct_head, lambda out: out),
            "contextual_attention": (generator.fine.contextual_attention, lambda out: out[0]),
        }
        for name, (module, pick) in hooks.items():
            module.register_forward_hook(self._recorder(name, pick))

    def _recorder(self, name: str, pick: Callable[[Any], torch.Tensor]):
        def hook(_module, _inputs, output) -> None:
            self.recorded[name] = pick(output).detach().float().contiguous()
        return hook

    def run(self, inputs: dict[str, np.ndarray], samples: list[int], mask_height_px: float) -> dict[str, np.ndarray]:
        """All outputs for ``samples`` in one call, as (B, ...) float arrays keyed like the fixture."""
        def image(key: str) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(inputs[key][samples], dtype=np.float32))

        ratio_key = "slice_ratio_float32" if "slice_ratio_float32" in inputs else "slice_ratio"
        ratio = torch.from_numpy(np.asarray(inputs[ratio_key][samples], dtype=np.float32))
        masked = image("masked_ct")
        offset_plane = ratio.view(-1, 1, 1, 1).expand(masked.shape).contiguous()
        with torch.no_grad():
            out = self.generator(masked, offset_plane, image("mask"), image("cam"), mask_height_px)
        result = {key: getattr(out, ours).float().numpy() for key, ours in GENERATOR_OUTPUTS.items()}
        result.update({key: value.numpy() for key, value in self.recorded.items()})
        return result


def generator_rows(fixtures: Path, checkpoints_dir: Path) -> tuple[list[Row], HealthiVertGenerator]:
    folder = fixtures / "generator"
    meta = read_json(folder / "generator.json")
    checkpoint = import_reference_weights(folder / meta["checkpoint"]["file"], "reference_fixture", checkpoints_dir)
    generator = load_generator(checkpoint).generator
    hooked = HookedGenerator(generator)
    inputs = dict(np.load(folder / "inputs.npz"))
    expected = dict(np.load(folder / "outputs.npz"))
    count = len(inputs["masked_ct"])
    mask_height_px = float(generator.mask_height_px)
    keys = [key for key in (*GENERATOR_OUTPUTS, *HOOKED_OUTPUTS) if key in expected]
    single = [hooked.run(inputs, [n], mask_height_px) for n in range(count)]
    rows = []
    for key in keys:
        ours = np.concatenate([s[key] for s in single]).reshape(expected[key].shape)
        rows.append(float_row(f"generator {key}, batch 1", max_abs(ours, expected[key])))
    batch = hooked.run(inputs, list(range(count)), mask_height_px)
    worst = max(max_abs(batch[key].reshape(expected[key].shape), expected[key]) for key in keys)
    rows.append(float_row(f"generator, all {count} samples in one batch vs per-sample outputs ({len(keys)} outputs)",
                          worst))
    bug_file = folder / "outputs_batch2_with_sample0_mask_bug.npz"
    if bug_file.is_file():
        rows.append(sample0_bug_row(inputs, batch, expected, dict(np.load(bug_file))))
    return rows, generator


def sample0_bug_row(inputs: dict[str, np.ndarray], ours: dict[str, np.ndarray], per_sample: dict[str, np.ndarray],
                    bug: dict[str, np.ndarray]) -> Row:
    """Our batched fine CT differs from the published batch result for samples whose mask is not sample 0's."""
    masks = inputs["mask"]
    others = [n for n in range(1, min(len(masks), len(bug["fine_ct"]))) if not np.array_equal(masks[n], masks[0])]
    item = "generator batch uses each sample's own mask (not the sample-0-mask bug file)"
    if not others:
        return row(item, "no sample with another mask", "n/a", True)
    ours_vs_bug = min(max_abs(ours["fine_ct"][n], bug["fine_ct"][n]) for n in others)
    reference_vs_bug = min(max_abs(per_sample["fine_ct"][n], bug["fine_ct"][n]) for n in others)
    if reference_vs_bug <= FLOAT_TOLERANCE:
        return row(item, f"bug leaves fine_ct unchanged ({reference_vs_bug:.2g})", "n/a", True)
    return row(item, ours_vs_bug, f"> {FLOAT_TOLERANCE:g}", ours_vs_bug > FLOAT_TOLERANCE)


# ----------------------------------------------------------------------------- masking


def load_nifti(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float64)


def masking_rows(fixtures: Path) -> list[Row]:
    folder = fixtures / "masking"
    meta = read_json(folder / "masking.json")
    split = read_json(folder / str(meta["split_file"]).split()[0])
    phase = meta["options"]["phase"]
    neighbours = healthy_labels_by_case(split, MAX_HEALTHY_GRADE, [phase] if REFERENCE.neighbours_same_split else None)
    image_diff = label_diff = scalar_diff = ratio_diff = 0.0
    outside_candidates: list[str] = []
    for name, info in meta["samples"].items():
        sample = dict(np.load(folder / info["file"]))
        files = {Path(p).parts[0]: folder / p for p in info["files_read_by_reference"]}
        patient, _, label_text = info["vertebra_id"].rpartition("_")
        target = int(label_text)
        labels = load_nifti(files["label"]).astype(np.int64)
        ct_hu, cam = reader_inputs(load_nifti(files["CT"]),
                                   load_nifti(files["heatmap"]) if "heatmap" in files else None)
        z = int(sample["slice_index"])
        slab = plane_slab(labels, "sagittal")
        first, last = target_slice_extent(slab, target, MIN_COMPONENT_PX)
        start, stop = central_slice_range(first, last, CENTRAL_FRACTION)
        if not start <= z <= stop:
            outside_candidates.append(name)
        ratio_diff = max(ratio_diff, abs(float(slice_offset_ratio(z, first, last)) - float(sample["slice_ratio"])))
        masked = make_masked_slice(window_hu(ct_hu[:, :, z]), labels[:, :, z], target,
                                   None if cam is None else cam[:, :, z], int(sample["h2"]), MIN_COMPONENT_PX,
                                   neighbour_labels=neighbours.get(patient, set()),
                                   target_is_neighbour=REFERENCE.target_in_neighbour_mask)
        if masked is None:
            outside_candidates.append(name)
            continue
        pairs = {"B": masked.masked_ct, "A": window_hu(ct_hu[:, :, z]), "mask": masked.band_mask, "CAM": masked.cam}
        image_diff = max(image_diff, *(max_abs(ours, sample[key][0]) for key, ours in pairs.items() if key in sample))
        label_diff = max(label_diff, max_abs(masked.target_label_mask, sample["A_mask"][0]),
                         max_abs(masked.neighbour_label, sample["normal_vert"][0]))
        scalars = {"x1": masked.target_top, "x2": masked.target_bottom, "height": masked.height_px,
                   "min_x": masked.band_top, "max_x": masked.band_top + int(sample["h2"])}
        scalar_diff = max(scalar_diff,
                          *(abs(int(sample[key]) - value) for key, value in scalars.items() if key in sample))
    count = len(meta["samples"])
    return [
        float_row(f"masking: masked CT, original CT, band mask, attention ({count} samples)", image_diff),
        row("masking: target and neighbour masks", label_diff, "exact", label_diff == 0),
        row("masking: x1, x2, height, band rows", scalar_diff, "exact", scalar_diff == 0),
        float_row("masking: slice-offset ratio of the sampled slice", ratio_diff, 1e-12),
        row("masking: sampled slice inside our candidate slices", "all" if not outside_candidates else
            ", ".join(outside_candidates), "all", not outside_candidates),
    ]


# ----------------------------------------------------------------------------- composition


def reference_model(mask_height_px: float) -> HealthiVertModel:
    opt = argparse.Namespace(isTrain=False, gpu_ids=[], protocol=REFERENCE.name, ngf=4, mask_height=mask_height_px,
                             checkpoints_dir=tempfile.gettempdir(), name="reference_equivalence")
    return HealthiVertModel(opt)


def band_rows_of(mask: np.ndarray) -> tuple[int, int]:
    """First and one-past-last row of a (H, W) band mask."""
    rows = np.flatnonzero(np.asarray(mask).max(axis=1) > 0.5)
    return int(rows[0]), int(rows[-1]) + 1


def training_composition(case: dict[str, np.ndarray], model: HealthiVertModel) -> dict[str, float]:
    """Max abs differences of our training composition (fine, coarse, local crops) for one case."""
    batch = len(case["real_B"])
    band = [band_rows_of(case["mask"][n, 0]) for n in range(batch)]
    mask_height = int(np.asarray(case["h2"]).reshape(-1)[0])
    zeros = np.zeros_like(case["real_B"])
    model.set_input({"masked_ct": zeros, "real_ct": case["real_B"], "band_mask": case["mask"], "offset_plane": zeros,
                     "cam": zeros, "neighbour_label": zeros, "target_label": zeros,
                     "target_top": case["x1"], "target_bottom": case["x2"],
                     "band_centre": np.array([top + mask_height // 2 for top, _ in band]),
                     "height_px": case["height"]})
    def height(key: str) -> torch.Tensor:  # the height head: sigmoid * band rows, float32
        return torch.from_numpy(case[key].astype(np.float32)).view(-1) * torch.tensor(float(mask_height))

    real = model.real_ct
    fine = model.compose(real, torch.from_numpy(case["fake_B_raw"]), height("pred2_h_sigmoid"))
    coarse = model.compose(real, torch.from_numpy(case["x_stage1"]), height("pred1_h_sigmoid"))
    local = model.band_mask * central_columns_mask(model.band_mask, 70)
    diffs = {"fake_B": max_abs(fine.numpy(), case["fake_B"]),
             "fake_B_coarse": max_abs(coarse.numpy(), case["fake_B_coarse"])}
    if "fake_B_local" in case:
        diffs["fake_B_local"] = max_abs((fine * local).numpy(), case["fake_B_local"])
        diffs["real_B_local"] = max_abs((real * local).numpy(), case["real_B_local"])
    for key, sigmoid in (("pred1_h_px", "pred1_h_sigmoid"), ("pred2_h_px", "pred2_h_sigmoid")):
        if key in case:
            diffs[key] = max_abs(height(sigmoid).numpy(), np.asarray(case[key]).reshape(-1))
    return diffs


class RecordingRunner:
    """A generator runner (``GeneratorRunner`` interface) that records what it was fed; with ``outputs``
    it replays recorded generator outputs instead of running ``runner``."""

    def __init__(self, runner: Callable | None = None,
                 outputs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        self.runner = runner
        self.outputs = outputs
        self.inputs: dict[str, np.ndarray] = {}

    def __call__(self, masked_ct, offsets, band_mask, cam, mask_height_px):
        self.inputs = {"model_in_ct": masked_ct, "model_in_mask": band_mask, "model_in_cam": 1.0 - cam}
        if self.outputs is not None:
            return self.outputs
        return self.runner(masked_ct, offsets, band_mask, cam, mask_height_px)


def inference_composition(case: dict[str, np.ndarray], mask_height_px: int, generator: HealthiVertGenerator
                          ) -> tuple[dict[str, float], bool]:
    """Max abs differences of our inference step (inputs fed to the generator where recorded, composed
    CT in [-1, 1] units, labels) for one case, and whether the composition is comparable (height
    within the band). Cases with recorded stand-in outputs replay them; others run ``generator``."""
    ct_hu, cam = reader_inputs(case["ct_data"], np.asarray(case["CAM_data"], dtype=np.float64) / 255.0)
    labels = np.asarray(case["label_data"]).astype(np.int64)[None]
    if "fake_B_raw" in case:
        height = (case["pred_h_sigmoid"].astype(np.float32).reshape(-1) * np.float32(mask_height_px))
        runner = RecordingRunner(outputs=(case["fake_B_raw"][:, 0], case["fake_B_mask_sigmoid"][:, 0],
                                          height.astype(np.float32)))
    else:
        runner = RecordingRunner(GeneratorRunner(generator, batch_size=0))
    ct = ct_hu[None].copy()
    probability = np.zeros(ct.shape, dtype=np.float32)
    settings = SynthesisSettings(mask_height_px, DEFAULT_WINDOW_HU, MIN_COMPONENT_PX, NEIGHBOUR_MIN_PX, REFERENCE)
    done = synthesize_centred(runner, ct, labels, probability, cam[None], np.asarray(case["index_ratio"], np.float32),
                              int(case["vert_id"]), True, settings, ct.shape[2])
    diffs = {key: max_abs(value, case[key][:, 0]) for key, value in runner.inputs.items() if key in case}
    comparable = bool(done[0]) and int(case["out_height"]) <= mask_height_px
    if comparable:
        diffs["out_ct"] = max_abs(window_hu(ct[0]), case["out_ct"].astype(np.float64) / 127.5 - 1.0)
        diffs["out_seg"] = max_abs(labels[0], case["out_seg"])
    return diffs, comparable


def composition_rows(fixtures: Path, generator: HealthiVertGenerator) -> list[Row]:
    folder = fixtures / "composition"
    masking_meta = read_json(fixtures / "masking" / "masking.json")
    mask_height_px = int(next(iter(masking_meta["samples"].values()))["h2"])
    model = reference_model(float(mask_height_px))
    train_files = sorted(folder.glob("train_*.npz"))
    infer_files = sorted(folder.glob("infer_*.npz"))
    train = [training_composition(dict(np.load(path)), model) for path in train_files]
    infer = [(path.stem, *inference_composition(dict(np.load(path)), mask_height_px, generator))
             for path in infer_files]
    rows = []
    if train:
        worst = max(max(d.values()) for d in train)
        rows.append(float_row(f"composition, training ({len(train)} cases: fine, coarse, local crops, heights)", worst))
    if infer:
        inputs = max(max((v for k, v in d.items() if k.startswith("model_in")), default=0.0) for _, d, _ in infer)
        rows.append(float_row(f"composition, inference: generator inputs ({len(infer)} cases, 41-row mask)", inputs))
        comparable = [d for _, d, ok in infer if ok]
        skipped = [name for name, _, ok in infer if not ok]
        ct = max((d["out_ct"] for d in comparable), default=0.0)
        seg = max((d["out_seg"] for d in comparable), default=0.0)
        note = (f" ({len(comparable)} cases; not composed: {', '.join(skipped)})" if skipped
                else f" ({len(comparable)} cases)")
        rows.append(float_row("composition, inference: composed CT" + note, ct))
        rows.append(row("composition, inference: composed labels", seg, "exact", seg == 0))
    return rows


# ----------------------------------------------------------------------------- iterative


def iterative_rows(fixtures: Path, generator: HealthiVertGenerator) -> list[Row]:
    folder = fixtures / "iterative"
    meta = read_json(folder / "iterative.json")
    paths = {m.group(1): fixtures / m.group(0)
             for m in re.finditer(r"masking/(CT|label|heatmap)/[\w.-]+\.nii(?:\.gz)?", meta["what"])}
    expected = dict(np.load(folder / "outputs.npz"))
    labels = load_nifti(paths["label"]).astype(np.int64)
    ct_hu = grey_to_hu(load_nifti(paths["CT"])).astype(np.float32)
    cam = load_nifti(paths["heatmap"]) if "heatmap" in paths else None
    target = int(paths["label"].name.split(".")[0].rpartition("_")[2])
    mask_height_px = round(generator.mask_height_px)
    settings = SynthesisSettings(mask_height_px, DEFAULT_WINDOW_HU, MIN_COMPONENT_PX, NEIGHBOUR_MIN_PX, REFERENCE)
    result = synthesize_plane(GeneratorRunner(generator, batch_size=0), ct_hu, labels.astype(np.uint8), cam, target,
                              "sagittal", settings)
    processed = [int(z) for z in expected.get("processed_slices", result.processed_slices)]
    same_slices = processed == result.processed_slices
    ct = max_abs(hu_to_grey(result.ct_hu[:, :, processed]), expected["CT_fake"][:, :, processed])
    label = max_abs(result.label_map[:, :, processed], expected["label_fake"][:, :, processed])
    calls = len(meta.get("calls", []))
    return [
        row("iterative: processed slices", "same" if same_slices else f"ours {result.processed_slices}", "same",
            same_slices),
        row(f"iterative: CT_fake grey levels ({len(processed)} slices, {calls} published calls)", ct,
            f"<= {GREY_TOLERANCE:g}", ct <= GREY_TOLERANCE),
        row("iterative: label_fake", label, "exact", label == 0),
    ]


# ----------------------------------------------------------------------------- evaluation, table, main


def check(fixtures: Path) -> list[Row]:
    """Every row for the fixture set in ``fixtures``."""
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as checkpoints:
        rows, generator = generator_rows(fixtures, Path(checkpoints))
    rows += masking_rows(fixtures)
    rows += composition_rows(fixtures, generator)
    rows += iterative_rows(fixtures, generator)
    rows += check_rhlv(fixtures) + check_svm(fixtures)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES,
                        help="fixture folder (generator/, masking/, composition/, iterative/, rhlv/, svm/)")
    args = parser.parse_args(argv)
    if not args.fixtures.is_dir():
        print(f"error: {args.fixtures}: fixture folder not found (give --fixtures DIR)", file=sys.stderr)
        return 2
    try:
        rows = check(args.fixtures)
    except (OSError, KeyError, ValueError) as err:
        print(f"error: {args.fixtures}: cannot read the fixtures ({type(err).__name__}: {err})", file=sys.stderr)
        return 2
    return report(rows)


if __name__ == "__main__":
    sys.exit(main())
