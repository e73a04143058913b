"""Self-contained HTML report of one predicted scan (images embedded as base64 PNG).

Top: what was graded how, the summary table and a whole-spine sagittal overview (the straightened
spine's mid-sagittal plane, original and pseudo-healthy, vertebrae coloured by grade). Then one
section per vertebra: original vs pseudo-healthy mid-sagittal slice of its crop, the height-loss map
and curve (``evaluation.plots.save_height_loss_map``, drawn by the RHLV step), and its numbers.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from data.crops import load_crop
from data.image_io import Volume, load_ct, load_mask
from data.synthesis_layout import OutputLayout
from straighten.frames import StraightLine, grid_for_crops
from util.fileio import atomic_write
from util.report import CT_DISPLAY_WINDOW_HU, figure_data_uri, file_data_uri

if TYPE_CHECKING:
    from pipeline.predict import PredictSettings

GRADE_COLOURS = ("#2ca02c", "#ffd700", "#ff7f0e", "#d62728")  # grades 0..3
GRADE_NAMES = ("0 normal", "1 mild", "2 moderate", "3 severe")
STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 1150px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em 0; }
th, td { border: 1px solid #bbb; padding: 3px 6px; text-align: right; }
th { background: #eee; } td.text { text-align: left; }
section { border-top: 1px solid #ccc; margin-top: 1.2em; padding-top: 0.4em; }
.grade { display: inline-block; width: 0.9em; height: 0.9em; border: 1px solid #555; vertical-align: middle; }
.note { color: #555; font-size: 0.85em; }
img { max-width: 100%; }
"""


def _number(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _grade_swatch(grade: Any) -> str:
    if grade is None or pd.isna(grade):
        return ""
    return f'<span class="grade" style="background:{GRADE_COLOURS[int(grade)]}"></span> '


def summary_table(table: pd.DataFrame) -> str:
    """HTML summary: one row per vertebra, grade, morphology, largest RHLV, heights and status."""
    header = ["vertebra", "VerSe id", "status", "grade", "morphology", "RHLV ant.", "RHLV mid.", "RHLV post.",
              "H ori ant. (mm)", "H syn ant. (mm)", "H ori mid. (mm)", "H syn mid. (mm)", "H ori post. (mm)",
              "H syn post. (mm)"]
    rows = []
    for row in table.itertuples():
        grade = "" if row.status != "ok" else _grade_swatch(row.grade) + str(int(row.grade))
        status = html.escape(row.status) + (f"<br><span class='note'>{html.escape(row.reason)}</span>"
                                            if row.status != "ok" else "")
        cells = [f"<td class='text'>{html.escape(row.name)}</td>", f"<td>{row.verse_id}</td>",
                 f"<td class='text'>{status}</td>", f"<td class='text'>{grade}</td>",
                 f"<td class='text'>{html.escape(str(row.morphology or ''))}</td>"]
        cells += [f"<td>{_number(getattr(row, f'RHLV_{r}'))}</td>" for r in ("anterior", "middle", "posterior")]
        for region in ("anterior", "middle", "posterior"):
            cells += [f"<td>{_number(getattr(row, f'H_ori_{region}_mm'), 1)}</td>",
                      f"<td>{_number(getattr(row, f'H_syn_{region}_mm'), 1)}</td>"]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" + "".join(rows) + "</table>")


def _grade_overlay(grades_plus_one: np.ndarray) -> np.ndarray:
    """RGBA image of a (grade + 1) label slice, transparent where 0."""
    colours = np.zeros((5, 4))
    for grade, colour in enumerate(GRADE_COLOURS):
        colours[grade + 1, :3] = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        colours[grade + 1, 3] = 0.45
    return colours[np.clip(grades_plus_one.astype(int), 0, 4)]


def overview_figure(sidecar: dict[str, Any], ct: Volume, pseudo_hu: np.ndarray, grades: np.ndarray,
                    table: pd.DataFrame) -> Figure:
    """Whole-spine mid-sagittal view of the straightened spine: original and pseudo-healthy, coloured by grade."""
    line = StraightLine.from_json(sidecar["centreline"])
    size = sidecar["crop_size"]
    spacing = float(sidecar["sampling"]["spacing_mm"])
    grid = grid_for_crops(line, (int(size[0]), int(size[1]), 1), spacing)
    original = grid.sample(ct.array, ct.affine, order=1, fill=-1024.0, dtype=np.float32)[:, :, 0]
    pseudo = grid.sample(pseudo_hu, ct.affine, order=1, fill=-1024.0, dtype=np.float32)[:, :, 0]
    graded = grid.sample(grades, ct.affine, order=0, fill=0, dtype=np.uint8)[:, :, 0]
    figure = Figure(figsize=(8.5, max(4.0, min(11.0, 8.5 * original.shape[0] / (2 * original.shape[1])))))
    axes = figure.subplots(1, 2)
    low, high = CT_DISPLAY_WINDOW_HU
    for axis, image, title in ((axes[0], original, "original, coloured by grade"), (axes[1], pseudo, "pseudo-healthy")):
        axis.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="bilinear")
        axis.set_title(f"{title}\n(straightened mid-sagittal, anterior left)", fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0].imshow(_grade_overlay(graded), interpolation="nearest")
    for row in table[table["status"] == "ok"].itertuples():
        arc = next((a for lab, a in zip(line.labels, line.arc_mm) if lab == row.verse_id), None)
        if arc is not None:
            axes[0].text(2, grid.row_of(arc), row.name, color="white", fontsize=8, va="center")
    figure.legend(handles=[Patch(color=c, label=f"grade {n}") for c, n in zip(GRADE_COLOURS, GRADE_NAMES)],
                  loc="lower center", ncol=4, fontsize=8)
    figure.tight_layout(rect=(0, 0.05, 1, 0.98))
    return figure


def vertebra_figure(dataroot: Path, fake_root: Path, key: str) -> Figure | None:
    """Original vs pseudo-healthy mid-sagittal slice of one crop, target outlined."""
    crop = load_crop(dataroot, key)
    fake_path = OutputLayout(fake_root).ct(key)
    if not fake_path.is_file() or crop.ct_hu is None:
        return None
    fake_ct = load_ct(fake_path).array
    fake_label = load_mask(OutputLayout(fake_root).label(key)).array
    column = int(crop.sidecar["centre_voxel"][2])
    spacing = crop.spacing_mm
    figure = Figure(figsize=(6.4, 3.4))
    axes = figure.subplots(1, 2)
    low, high = CT_DISPLAY_WINDOW_HU
    for axis, image, labels, title in ((axes[0], crop.ct_hu, crop.label_map, "original"),
                                       (axes[1], fake_ct, fake_label, "pseudo-healthy")):
        axis.imshow(image[:, :, column], cmap="gray", vmin=low, vmax=high, aspect=spacing[0] / spacing[1])
        axis.contour(labels[:, :, column] == crop.label, levels=[0.5], colors="cyan", linewidths=0.7)
        axis.set_title(f"{title} (mid-sagittal)", fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    return figure


def vertebra_section(row: Any, dataroot: Path, fake_root: Path, maps: Path, reference: str) -> str:
    """HTML section of one vertebra."""
    title = f"{html.escape(row.name)} ({html.escape(row.Vertebra)})"
    if row.status != "ok":
        return (f"<section><h3>{title}</h3><p>not graded: {html.escape(row.status)} – "
                f"{html.escape(row.reason)}</p></section>")
    parts = [(f"<section><h3>{_grade_swatch(row.grade)}{title}: grade {int(row.grade)}, "
              f"{html.escape(row.morphology)}</h3>")]
    figure = vertebra_figure(dataroot, fake_root, row.Vertebra)
    if figure is not None:
        parts.append(f'<img alt="{title} slices" src="{figure_data_uri(figure, dpi=90)}">')
    suffix = "" if reference == "synthesized" else f"_{reference}"
    uri = file_data_uri(maps / f"{row.Vertebra}{suffix}.png")
    if uri:
        parts.append(f'<img alt="{title} height-loss map" src="{uri}">')
    cells = "".join(f"<tr><td class='text'>{region}</td><td>{_number(getattr(row, f'H_ori_{region}_mm'), 1)}</td>"
                    f"<td>{_number(getattr(row, f'H_syn_{region}_mm'), 1)}</td>"
                    f"<td>{_number(getattr(row, f'RHLV_{region}'), 3)}</td></tr>"
                    for region in ("anterior", "middle", "posterior", "whole"))
    parts.append("<table><tr><th>region</th><th>H original (mm)</th><th>H pseudo-healthy (mm)</th><th>RHLV</th></tr>"
                 f"{cells}</table></section>")
    return "".join(parts)


def write_report(path: Path, settings: PredictSettings, table: pd.DataFrame, method: str, notes: list[str],
                 ct: Volume, pseudo_hu: np.ndarray, grades: np.ndarray, dataroot: Path, fake_root: Path,
                 maps: Path) -> Path:
    """Write ``report.html`` (atomic) and return its path."""
    measured = table[table["status"] == "ok"]
    first_key = measured["Vertebra"].iloc[0]
    sidecar = load_crop(dataroot, first_key, need_ct=False).sidecar
    overview = figure_data_uri(overview_figure(sidecar, ct, pseudo_hu, grades, table), dpi=80)
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    reference = ("synthesized pseudo-healthy vertebra" if settings.reference == "synthesized"
                 else "nearest healthy neighbours (baseline, no synthesis in the heights)")
    body = [
        f"<h1>Vertebral height loss: {html.escape(Path(settings.ct).name)}</h1>",
        (f"<p>CT <code>{html.escape(str(settings.ct))}</code>, mask <code>{html.escape(str(settings.mask))}</code> "
         f"({html.escape(settings.label_scheme)} labels); model <code>{html.escape(settings.name)}</code>; "
         f"heights against the {reference}.</p>"),
        f"<p><b>Grading:</b> {html.escape(method)}.</p>",
        "<h2>Summary</h2>", summary_table(table),
        "<h2>Whole spine</h2>", f'<img alt="whole-spine overview" src="{overview}">',
        "<h2>Vertebrae</h2>",
        *[vertebra_section(row, dataroot, fake_root, maps, settings.reference) for row in table.itertuples()],
    ]
    if note_items:
        body.append(f"<h2>Notes</h2><ul class='note'>{note_items}</ul>")
    document = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>HealthiVert report</title>"
                f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")
    with atomic_write(path, encoding="utf-8") as handle:
        handle.write(document)
    return path
