"""Simulated micrographs (2D) and tomograms (3D) with known ground truth.

- :mod:`cryopick.simulate.densities` — particle classes as weighted point clouds (render, project).
- :mod:`cryopick.simulate.shapes` — procedural protein-like particle classes.
- :mod:`cryopick.simulate.atoms` — PDB / mmCIF atomic models.
- :mod:`cryopick.simulate.placement` — placement shortfall warnings.
- :mod:`cryopick.simulate.rotations` — uniform random orientations, point groups, Euler angles.
- :mod:`cryopick.simulate.ctf` — contrast transfer function (2D with astigmatism, 3D isotropic).
- :mod:`cryopick.simulate.tomogram` — tomograms with picks and instance / class occupancy masks.
- :mod:`cryopick.simulate.micrograph` — micrographs with picks.
"""
