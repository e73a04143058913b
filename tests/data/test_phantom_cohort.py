"""data.phantoms.cohort: a batch continues past a bad case, names it, writes no split; workers do not change files."""

from __future__ import annotations

from pathlib import Path

from data.crops import read_split
from data.phantoms.cohort import make_cohort

COHORT = dict(n_cases=2, seed=9, labels=(19, 20, 21), spacing_mm=(2.0, 2.0, 2.0), noise_hu=10.0, margin_mm=4.0)


def test_pool_matches_serial_and_a_bad_case_is_named_not_fatal(tmp_path: Path) -> None:
    serial, failures = make_cohort(tmp_path / "serial", workers=1, progress=False, **COHORT)
    assert failures == [] and [t["case"] for t in serial] == ["ph000", "ph001"]
    split = read_split(tmp_path / "serial" / "vertebra_data.json")
    assert sorted(key for keys in split.values() for key in keys) == sorted(
        f"{t['case']}_{v['label']}" for t in serial for v in t["vertebrae"])

    blocked = tmp_path / "pool" / "raw" / "ph001"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the case folder goes", encoding="utf-8")
    pooled, failures = make_cohort(tmp_path / "pool", workers=2, progress=False, **COHORT)
    assert [t["case"] for t in pooled] == ["ph000"] and pooled[0] == serial[0]
    assert len(failures) == 1 and failures[0].startswith("ph001: NotADirectoryError")
    assert not (tmp_path / "pool" / "vertebra_data.json").exists()  # no split from a partial cohort
    for name in ("ph000.nii.gz", "ph000_msk.nii.gz", "ph000_truth.json"):
        written = (tmp_path / "pool" / "raw" / "ph000" / name).read_bytes()
        assert written == (tmp_path / "serial" / "raw" / "ph000" / name).read_bytes()
