"""Writes the two tiny reconstructions of this RELION 5-shaped project (run from the repository root:
``python tests/data/relion5/make_tomograms.py``). Each is float16 noise (seed = its index) with bright
balls of radius 4 voxels at the voxel centres listed here, shaped as RELION 5's Reconstruct job sizes
a bin-8 reconstruction of the bin-1 size in tomograms.star: X, Y = int(size / 8 + 0.5), Z = int(size / 8)
(``TomoBackprojectProgram::reconstructOneTomogram``). Header voxel size 10.8 Å = 1.35 Å x 8."""

from pathlib import Path

import numpy as np

from cryopick.io.images import write_mrc

HERE = Path(__file__).parent
#: name -> (shape (Z, Y, X) of the bin-8 reconstruction, ball centres (x, y, z) in its voxels)
TOMOGRAMS = {"TS_01": ((32, 40, 40), [(10, 12, 9), (28, 26, 20), (14, 30, 22)]),
             "TS_02": ((32, 40, 40), [(20, 10, 12), (30, 30, 16)])}

if __name__ == "__main__":
    for k, (name, (shape, centres)) in enumerate(TOMOGRAMS.items()):
        rng = np.random.default_rng(k)
        vol = rng.normal(0, 0.3, shape).astype(np.float32)
        zz, yy, xx = np.indices(shape)
        for x, y, z in centres:
            vol[(xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2 <= 16] = 5.0
        write_mrc(HERE / "Tomograms" / "job005" / "tomograms" / f"rec_{name}.mrc", vol.astype(np.float16),
                  pixel_size=10.8)
