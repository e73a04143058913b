"""data/import_verse.py on a tiny fake VerSe BIDS tree: layout, entities, official centroids converted to our format."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from data import import_verse
from data.image_io import find_case_files, load_mask, voxel_to_world
from data.verse import find_scans
from tests.phantom_fixtures import make_test_phantom


def verse_centroid_file(mask_path: Path, path: Path, direc: str = "PIR") -> dict[int, np.ndarray]:
    """Write VerSe-style centroids (voxel indices of the mask reoriented to ``direc``); returns label -> RAS mm."""
    image = nib.load(str(mask_path))
    array = np.asanyarray(image.dataobj)
    transform = nio.ornt_transform(nio.io_orientation(image.affine), nio.axcodes2ornt(tuple(direc)))
    reoriented = nio.apply_orientation(array, transform)
    entries: list[dict] = [{"direc": list(direc)}]
    truth = {}
    for label in np.unique(array)[1:]:
        centre = np.argwhere(reoriented == label).mean(axis=0)
        entries.append({"label": int(label), "X": float(centre[0]), "Y": float(centre[1]), "Z": float(centre[2])})
        truth[int(label)] = voxel_to_world(image.affine, np.argwhere(array == label).mean(axis=0)[None])[0]
    path.write_text(json.dumps(entries), encoding="utf-8")
    return truth


def test_import_verse_bids_tree(tmp_path: Path, capsys) -> None:
    phantom_root = tmp_path / "phantom"
    make_test_phantom(phantom_root, case="ph", labels=(20, 21, 22), orientation="LPS", spacing_mm=(1.2, 1.0, 1.5),
                      noise_hu=None)
    ct, mask = phantom_root / "raw/ph/ph.nii.gz", phantom_root / "raw/ph/ph_msk.nii.gz"
    verse = tmp_path / "verse20"
    truth = {}
    for case in ("sub-gl003_dir-ax", "sub-verse401_split-verse253"):
        subject = case.split("_")[0]
        (verse / "rawdata" / subject).mkdir(parents=True)
        (verse / "derivatives" / subject).mkdir(parents=True)
        (verse / "rawdata" / subject / f"{case}_ct.nii.gz").write_bytes(ct.read_bytes())
        (verse / "derivatives" / subject / f"{case}_seg-vert_msk.nii.gz").write_bytes(mask.read_bytes())
        truth = verse_centroid_file(mask, verse / "derivatives" / subject / f"{case}_seg-subreg_ctd.json")
    # a CT without its mask is reported and makes the exit status 1
    (verse / "rawdata" / "sub-gl004").mkdir(parents=True)
    (verse / "rawdata" / "sub-gl004" / "sub-gl004_ct.nii.gz").write_bytes(ct.read_bytes())
    assert [s.case for s in find_scans(verse)] == ["sub-gl003_dir-ax", "sub-gl004", "sub-verse401_split-verse253"]

    out = tmp_path / "dataset"
    assert import_verse.main(["--verse_root", str(verse), "--out", str(out), "--quiet"]) == 1
    printed = capsys.readouterr().out
    assert "FAILED sub-gl004" in printed and "no sub-gl004_seg-vert_msk.nii.gz" in printed
    for case in ("sub-gl003_dir-ax", "sub-verse401_split-verse253"):
        files = find_case_files(out / "raw" / case)
        assert files.ct.name == f"{case}.nii.gz" and files.mask.name == f"{case}_msk.nii.gz"
        records = json.loads(files.centroids.read_text(encoding="utf-8"))
        assert [r["label"] for r in records] == [20, 21, 22]
        loaded = load_mask(files.mask)
        for record in records:
            # the PIR voxel centroids of the file, converted to voxel indices of the LPS mask, are the label's centroid
            voxel = np.array([record["X"], record["Y"], record["Z"]])
            expected = np.argwhere(loaded.array == record["label"]).mean(axis=0)
            assert np.abs(voxel - expected).max() < 1e-3  # written with 3 decimals
            assert np.linalg.norm(np.array(record["world"]) - truth[record["label"]]) < 5e-3
            assert record["source"] == "verse"
