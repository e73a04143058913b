"""Measured effect of each difference between ``--protocol healthivert`` and the published code's behaviour.

    python benchmarks/reference_protocol_effects.py [--fixtures ../shared/data/reference]

On the fixture set's generator (imported with ``models/import_reference_weights.py``) and inputs:
- CT head: clamp (ours and the reference) vs a tanh head on the same pre-activations;
- band fill: the masked CT's band at -1 (ours and the reference) vs 0;
- inference mask: 41 rows (reference) vs 40 (healthivert), on the fine CT;
- contextual-attention mask: per sample (both protocols) vs the reference's sample-0 mask (its
  recorded batch-2 file);
- composition centre: rows by which generated rows are read shifted at a clamped band (healthivert)
  in the fixture's composition cases;
and, on a synthetic batch, the generator gradient of the edge loss with the soft mask (both
protocols) vs the reference's hard-thresholded mask. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import models
from benchmarks.reference_equivalence import DEFAULT_FIXTURES, HookedGenerator, band_rows_of, read_json
from data.masking import extend_band_rows
from models.import_reference_weights import import_reference_weights
from models.synthesis.checkpoints import load_generator
from models.synthetic import synthetic_batch


def band_values(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return values[np.broadcast_to(mask > 0.5, values.shape)]


def generator_effects(fixtures: Path) -> list[tuple[str, str]]:
    folder = fixtures / "generator"
    with tempfile.TemporaryDirectory() as checkpoints:
        checkpoint = import_reference_weights(folder / read_json(folder / "generator.json")["checkpoint"]["file"],
                                              "effects", checkpoints)
        generator = load_generator(checkpoint).generator
    hooked = HookedGenerator(generator)
    inputs = dict(np.load(folder / "inputs.npz"))
    count = len(inputs["masked_ct"])
    samples = list(range(count))
    base = hooked.run(inputs, samples, 40.0)
    rows = []
    pre = np.concatenate([base["coarse_ct_preclamp"], base["fine_ct_preclamp"]])
    tanh_vs_clamp = np.abs(np.tanh(pre) - np.clip(pre, -1, 1))
    rows.append(("CT head tanh instead of clamp (same pre-activations)",
                 f"max {tanh_vs_clamp.max():.3f}, mean {tanh_vs_clamp.mean():.3f} (CT units in [-1, 1])"))
    zero_band = dict(inputs)
    zero_band["masked_ct"] = np.where(inputs["mask"] > 0.5, np.float32(0.0), inputs["masked_ct"])
    band0 = hooked.run(zero_band, samples, 40.0)
    change = np.abs(band_values(band0["fine_ct"] - base["fine_ct"], inputs["mask"]))
    rows.append(("band fill 0 instead of -1 (fine CT in the band)",
                 f"max {change.max():.3f}, mean {change.mean():.4f}"))
    extended = dict(inputs)
    tops = np.array([band_rows_of(m[0])[0] for m in inputs["mask"]])
    extended["mask"] = extend_band_rows(inputs["mask"][:, 0], tops, 40)[:, None]
    rows41 = hooked.run(extended, samples, 40.0)
    change = np.abs(band_values(rows41["fine_ct"] - base["fine_ct"], extended["mask"]))
    rows.append(("inference mask 41 rows instead of 40 (fine CT in the band)",
                 f"max {change.max():.4f}, mean {change.mean():.5f}"))
    bug_file = folder / "outputs_batch2_with_sample0_mask_bug.npz"
    if bug_file.is_file():
        bug = np.load(bug_file)
        per_sample = np.load(folder / "outputs.npz")
        change = max(float(np.abs(bug["fine_ct"][n] - per_sample["fine_ct"][n]).max()) for n in range(1, count))
        rows.append(("contextual attention with sample 0's mask (reference batch file vs per-sample), fine CT",
                     f"max {change:.4f} on the samples with another band"))
    return rows


def composition_effects(fixtures: Path) -> list[tuple[str, str]]:
    shifts = []
    for path in sorted((fixtures / "composition").glob("train_*.npz")):
        case = np.load(path)
        top, _ = band_rows_of(case["mask"][0, 0])
        centre = (int(case["x1"][0]) + int(case["x2"][0])) // 2
        shifts.append((path.stem, top + int(case["h2"][0]) // 2 - centre))
    moved = [f"{name} {shift:+d}" for name, shift in shifts if shift]
    return [("composition reads generated rows at the band centre (healthivert) vs at the composed rows",
             f"{len(moved)} of {len(shifts)} training cases shifted: {', '.join(moved) or 'none'} rows")]


def edge_gradient_effect() -> list[tuple[str, str]]:
    parser = argparse.ArgumentParser()
    models.get_option_setter("healthivert")(parser, True)
    opt = parser.parse_args(["--ngf", "8", "--ndf", "8"])
    opt.isTrain, opt.gpu_ids, opt.checkpoints_dir, opt.name = True, [], tempfile.gettempdir(), "effects"
    torch.manual_seed(0)
    model = models.create_model(opt)
    model.set_input(synthetic_batch(2, 64))
    norms = {}
    for mode in ("soft", "hard"):
        model.netG.zero_grad(set_to_none=True)
        model.forward()
        seg = model.output.fine_target_seg
        seg = seg if mode == "soft" else (seg > 0.5).float()
        loss = torch.nn.functional.mse_loss(model.sobel(seg), model.sobel(model.target_label))
        if loss.requires_grad:
            loss.backward()
        grads = [p.grad.norm() for p in model.netG.parameters() if p.grad is not None]
        norms[mode] = float(torch.stack(grads).norm()) if grads else 0.0
    return [("edge loss on the hard-thresholded mask (reference) vs the soft mask: generator gradient norm",
             f"hard {norms['hard']:.3g}, soft {norms['soft']:.3g} (synthetic batch 2 x 64 x 64, ngf 8)")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES, help="fixture folder")
    args = parser.parse_args(argv)
    if not args.fixtures.is_dir():
        print(f"error: {args.fixtures}: fixture folder not found (give --fixtures DIR)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    rows = generator_effects(args.fixtures) + composition_effects(args.fixtures) + edge_gradient_effect()
    print("| difference | measured effect |\n| --- | --- |")
    for item, effect in rows:
        print(f"| {item} | {effect} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
