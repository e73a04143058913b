"""Vertebra centroids, spine straightening, de-pedicling and per-vertebra crops
(docs/design.md, 'Centroid JSON' and 'Straightened crops').

Library modules:

- :mod:`straighten.spine` measures every vertebra of a mask (whole and body centroids, border
  flags, the de-pedicle cut) and fits the centre line through the body centroids;
- :mod:`straighten.frames` turns that centre line into the straightened sampling grid and maps
  crop voxels back to the scan;
- :mod:`straighten.pipeline` straightens one case into crops and runs a batch of cases;
- :mod:`straighten.centroids` writes the centroid JSON (docs/design.md, 'Centroid JSON').

Scripts: ``straighten/location_json_local.py`` and ``straighten/straighten_mask_3d.py``.
"""
