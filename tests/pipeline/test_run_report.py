"""pipeline/run_report.py: the demo page, built from a prepared small run, holds the run's numbers,
its figures and the files it embeds."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.html import PNG_URI_PREFIX
from pipeline.report_data import demo_summary
from pipeline.run import PipelineRun
from pipeline.run_report import localisation_section, run_status_html, write_report
from tests.pipeline.small_run import write_small_run
from tests.pipeline.test_html import decode_png


class Page(HTMLParser):
    """The parts of a report page the tests read: sections (h2 -> tables, images, "not available"
    notes) and the text of ``<code>`` spans."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.codes: list[str] = []
        self._tag: list[str] = []
        self._text = ""
        self._current: dict | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._tag.append(tag)
        if tag in ("h2", "td", "th", "code"):
            self._text = ""
        elif tag == "table" and self._current is not None:
            self._current["tables"].append([])
        elif tag == "tr" and self._current is not None:
            self._current["tables"][-1].append([])
        elif tag == "img" and self._current is not None:
            self._current["images"].append(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        self._tag.pop()
        if tag == "h2":
            self._current = self.sections.setdefault(self._text, {"tables": [], "images": [], "missing": 0})
        elif tag in ("td", "th") and self._current is not None:
            self._current["tables"][-1][-1].append(self._text)
        elif tag == "code":
            self.codes.append(self._text)

    def handle_data(self, data: str) -> None:
        self._text += data
        if self._current is not None and "not available" in data:
            self._current["missing"] += 1


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def rows_by_first_cells(table: list[list[str]], width: int = 2) -> dict[tuple[str, ...], list[str]]:
    return {tuple(row[:width]): row for row in table[1:]}


@pytest.fixture(scope="module")
def report(small_run: PipelineRun) -> tuple[PipelineRun, Page]:
    return small_run, parse(write_report(small_run))


def test_sections_in_order_and_every_figure_embedded(report) -> None:
    run, page = report
    assert list(page.sections) == ["Summary", "Cohort", "Straightened crops and attention maps",
                                   "Original vs pseudo-healthy", "Height-loss maps",
                                   "RHLV against the true height loss",
                                   "Genant grading (linear SVM on Pre/Mid/Post RHLV)", "Generation metrics",
                                   "Training losses", "Timings"]
    assert all(section["missing"] == 0 for section in page.sections.values())
    for title in ("Straightened crops and attention maps", "Original vs pseudo-healthy",
                  "RHLV against the true height loss", "Training losses"):
        images = page.sections[title]["images"]
        assert len(images) == 1 and decode_png(images[0]["src"]).ndim == 3, title


def test_embedded_maps_are_the_files_the_rhlv_step_wrote(report) -> None:
    run, page = report
    images = page.sections["Height-loss maps"]["images"]
    assert len(images) == 2 * 4  # both references for each of the four examples
    for image in images:
        payload = base64.b64decode(image["src"][len(PNG_URI_PREFIX):])
        assert any(payload == png.read_bytes() for png in run.paths.maps.glob("*.png"))
    confusion = page.sections["Genant grading (linear SVM on Pre/Mid/Post RHLV)"]["images"]
    assert [base64.b64decode(i["src"][len(PNG_URI_PREFIX):]) for i in confusion] == [
        (m.grading / "confusion_matrices.png").read_bytes() for m in run.paths.methods]


def test_accuracy_table_holds_the_errors_of_the_rhlv_csvs(report) -> None:
    run, page = report
    summary = demo_summary(run)
    table = page.sections["RHLV against the true height loss"]["tables"][0]
    assert table[0][:7] == ["method", "vertebrae", "n", "MAE anterior", "MAE middle", "MAE posterior",
                            "MAE max region"]
    rows = rows_by_first_cells(table)
    for method in run.paths.methods:
        every = summary["accuracy"][method.method]["all"]
        row = rows[(method.method, "all")]
        assert int(row[2]) == len(pd.read_csv(method.rhlv))
        assert [float(v) for v in row[3:6]] == pytest.approx(
            [every["mae_anterior"], every["mae_middle"], every["mae_posterior"]], abs=5e-4)


def test_grading_generation_and_timing_tables_hold_the_files_values(report) -> None:
    run, page = report
    grading = json.loads((run.paths.grading / "grading.json").read_text(encoding="utf-8"))
    rows = rows_by_first_cells(page.sections["Genant grading (linear SVM on Pre/Mid/Post RHLV)"]["tables"][0], 1)
    assert rows[("HealthiVert-GAN",)][1:] == [f"{grading['mean'][k]:.3f} ({grading['variance'][k]:.4f})" for k in
                                              ("macro_precision", "macro_recall", "macro_f1", "accuracy")] + ["12", "6"]
    generation = page.sections["Generation metrics"]["tables"][0]
    assert generation == [["PSNR", "SSIM", "Dice"], ["27.500 (1.250)", "0.812 (0.062)", "0.938 (0.031)"]]
    timings = page.sections["Timings"]["tables"][0]
    assert [row[:3] for row in timings[1:]] == [[s.name, s.status, f"{s.wall_s:.1f}"] for s in run.steps] + [
        ["total", "", "4.5"]]
    assert [row[4] for row in timings[1:-1]] == [s.command for s in run.steps]


def test_cohort_table_lists_each_case_and_its_fractures(report) -> None:
    run, page = report
    cases = rows_by_first_cells(page.sections["Cohort"]["tables"][0], 1)
    assert list(cases) == [("ph000",), ("ph001",), ("ph002",)]
    assert cases[("ph001",)][1:6] == ["val", "LPS", "1.00 x 1.00 x 2.50", "T11-L4 (6)", "1"]
    assert cases[("ph001",)][6] == "L1 wedge 45% (g3)"


def test_paths_the_page_names_exist(report, repo_root: Path) -> None:
    run, page = report
    scripts = set(re.findall(r"\b[\w]+/[\w/]+\.py\b", run.paths.report.read_text(encoding="utf-8")))
    assert {"evaluation/SVM_grading.py", "benchmarks/phantom_accuracy.py"} <= scripts
    assert all((repo_root / script).is_file() for script in scripts), scripts
    assert str(run.paths.root) in page.codes and Path(page.codes[page.codes.index(str(run.paths.root))]).is_dir()
    summary = demo_summary(run)
    assert all(Path(step["log"]).is_file() for step in summary["steps"])


def test_headline_is_green_only_when_every_step_ran_completely(report) -> None:
    run, _ = report
    assert run_status_html(run) == "<span class='ok'>every step ran completely</span>"


def test_a_run_without_artefacts_still_gets_a_page_that_says_what_is_missing(tmp_path: Path) -> None:
    run = write_small_run(tmp_path)
    for path in (run.paths.heatmap, run.paths.results, run.paths.checkpoints):
        for file in sorted(path.rglob("*"), reverse=True):
            file.unlink() if file.is_file() else file.rmdir()
    page = parse(write_report(run))
    assert page.sections["Cohort"]["missing"] == 0 and len(page.sections["Cohort"]["tables"][0]) == 4
    for title in ("Original vs pseudo-healthy", "RHLV against the true height loss", "Training losses",
                  "Generation metrics"):
        assert page.sections[title]["missing"] >= 1, title
    attention = page.sections["Straightened crops and attention maps"]
    assert attention["missing"] == 0 and len(attention["images"]) == 1  # crops shown, maps all zero
    assert not np.isnan(decode_png(attention["images"][0]["src"])).any()


def test_localisation_section_prints_the_maps_summary(tmp_path: Path) -> None:
    from Attention.cam import write_localisation

    records = {"a_20": {"mass_share": 0.6, "peak_in_target": True, "mean_value": 0.1, "body_fraction": 0.05,
                        "fracture_mass_share": 0.7, "peak_on_fracture": True, "fractured": True, "grade": 2,
                        "morphology": "wedge"},
               "a_21": {"mass_share": 0.2, "peak_in_target": False, "mean_value": 0.1, "body_fraction": 0.05,
                        "fracture_mass_share": 0.5, "peak_on_fracture": True, "fractured": True, "grade": 1,
                        "morphology": "wedge"},
               "a_22": {"mass_share": 0.1, "peak_in_target": False, "mean_value": 0.02, "body_fraction": 0.05,
                        "fracture_mass_share": None, "peak_on_fracture": None, "fractured": False, "grade": 0,
                        "morphology": "none"}}
    write_localisation(tmp_path, records)
    text = localisation_section(tmp_path / "localisation.json")
    assert text.count("crop maps, ") == 3 and "own window" not in text  # all, then morphologies none and wedge
    assert "peak in target 1/2, mean mass share 0.400" in text
    assert "peak on a fractured body (target or neighbour) 2/2, mean mass share on fractured bodies 0.600" in text
    assert "healthy: mean map value 0.020" in text
    assert "no localisation summary" in localisation_section(tmp_path / "absent.json")
    own = {key: {**record, "mass_share": 0.9 if record["fractured"] else 0.1} for key, record in records.items()}
    write_localisation(tmp_path, records, own)
    text = localisation_section(tmp_path / "localisation.json")
    assert "target&#x27;s own window, all (3); fractured: peak in target 1/2, mean mass share 0.900" in text
