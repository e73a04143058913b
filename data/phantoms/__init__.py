"""Synthetic spine CT phantoms with known anatomy, fractures and truth (docs/design.md, 'Phantom truth').

A case is built in a physical frame (RAS millimetres): ``spec`` (what defines a case), ``geometry``
(frames, grids, voxel boxes), ``anatomy`` (one vertebra and its height definition), ``layout``
(centre line, frames, torso), ``paint`` (bone, discs, canal, ribs), ``soft_tissue`` (everything
else), ``truth`` (the truth file's vertebra entries), ``case`` (one case, generated and written) and
``cohort`` (case plan, split JSON, batch). ``data/make_phantoms.py`` is the command line.
"""
