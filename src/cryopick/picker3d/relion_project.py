"""``cryopick pick3d`` with tomograms named as RELION names them: the tomograms of a RELION 5
``tomograms.star`` (``--tomograms-star``: names from ``_rlnTomoName``, files from
``_rlnTomoReconstructedTomogram`` or another ``--tomogram-kind``, voxels placed by its bin-1 size,
tilt-series pixel size and binning), or tomogram files renamed by a ``--tomo-name`` rule
(``rec_TS_01.mrc`` -> ``TS_01``).

>>> summary = pick_relion(None, ["ribosome.prompt"], output_dir="picks/",
...                       tomograms_star="Tomograms/job005/tomograms.star")
>>> summary = pick_relion("Tomograms/job005/tomograms/", ["ribosome.prompt"], output_dir="picks/",
...                       tomo_name="relion")

The outputs are those of :func:`~cryopick.picker3d.batch.pick_tomograms`
(:mod:`cryopick.picker3d.outputs`), under the RELION names; ``relion5/tomograms.star`` then carries each
tomogram's row of the input ``tomograms.star`` (tilt-series pixel size, binning, every other column).
"""

from __future__ import annotations

import os
from typing import Sequence

from cryopick.errors import CryopickError
from cryopick.io.formats.relion_tomo import KINDS, named_tomograms, star_tomograms
from cryopick.io.images import list_images


def relion_sources(tomograms=None, tomograms_star: str | os.PathLike | None = None, tomo_name: str | None = None,
                   tomogram_kind: str = "reconstructed", project_dir: str | os.PathLike | None = None) -> list:
    """The tomograms to pick, each with its RELION name (and geometry, from ``tomograms_star``)."""
    if tomograms_star is not None:
        if tomo_name:
            raise CryopickError("--tomo-name renames tomogram files; with --tomograms-star the names are its "
                                "_rlnTomoName (leave --tomo-name out)")
        return star_tomograms(tomograms_star, tomogram_kind, project_dir=project_dir)
    if tomogram_kind != "reconstructed":
        raise CryopickError(f"--tomogram-kind {tomogram_kind} chooses a column of --tomograms-star; give "
                            "--tomograms-star tomograms.star")
    if tomograms is None:
        raise CryopickError("give the tomograms with --tomograms or --tomograms-star")
    paths = list_images(tomograms if isinstance(tomograms, (str, os.PathLike)) else list(tomograms))
    return named_tomograms(paths, tomo_name)


def pick_relion(tomograms, prompts: Sequence, model=None, settings=None, output_dir: str | os.PathLike = "picks",
                formats=("relion5",), *, tomograms_star: str | os.PathLike | None = None, tomo_name: str | None = None,
                tomogram_kind: str = "reconstructed", project_dir: str | os.PathLike | None = None,
                answers=(), adapted=(), **options) -> dict:
    """Pick tomograms under their RELION names (see the module docstring); ``options`` as for
    :func:`~cryopick.picker3d.batch.pick_tomograms`; ``adapted`` as for
    :func:`~cryopick.picker3d.questions.pick_with_answers`."""
    from cryopick.picker3d.batch import pick_tomograms
    from cryopick.picker3d.questions import pick_with_answers

    if tomogram_kind not in KINDS:
        raise CryopickError(f"unknown tomogram kind {tomogram_kind!r}; use {', '.join(KINDS)}")
    if answers:
        raise CryopickError("--answers finds its tomograms by file name: adapt with `pick3d --tomograms ... "
                            "--answers`, then pick with --tomograms-star / --tomo-name and --adapted FILE")
    sources = relion_sources(tomograms, tomograms_star, tomo_name, tomogram_kind, project_dir)
    info = {"names": "tomograms.star" if tomograms_star is not None else f"rule {tomo_name or 'stem'}",
            "kind": tomogram_kind}
    common = dict(sources=sources, source_info=info, project_dir=project_dir, **options)
    if adapted:
        return pick_with_answers(None, prompts, model, settings, output_dir, formats, adapted=adapted, **common)
    return pick_tomograms(None, prompts, model, settings, output_dir, formats, **common)
