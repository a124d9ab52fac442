"""3D picking in a copick project: its runs' tomograms in, copick picks out (``cryopick pick3d --copick``).

>>> summary = pick_copick("config.json", ["ribosome.prompt"], runs=["TS_01", "TS_02"], voxel_spacing=10,
...                       tomo_type="wbp", user_id="cryopick", session_id="1")
>>> prompt = prompt_from_copick("config.json", "TS_01", "ribosome", user_id="curator")   # prompt from picks

Runs are the unit of work: each selected run's tomogram (one voxel spacing and tomogram type) is picked
with every prompt, and the picks of each prompt go back into the run as the pick set
``(object = the prompt's label, user_id, session_id)``, in Å (voxel × voxel spacing), replacing that set
when it exists (a rerun never adds a second one). The labels must be pickable objects of the project.

Records and outputs: with ``output_dir`` the folder is an ordinary ``pick3d`` folder (RELION 5 STAR
per class and run, indexes, montages, ``summary.json``) besides the copick picks; without it only the
copick picks are written, and cryopick's records (finished runs, ``summary.json``) go to
``<overlay>/cryopick/pick3d_<user>_<session>/`` of a local project. A finished run is skipped on a rerun;
its record names the copick files. Another tomogram type, voxel spacing, prompt, model or settings for
the same folder is refused unless ``redo`` (the pick sets, one per object/user/session, would mix).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from cryopick.errors import CryopickError
from cryopick.io import copick as C
from cryopick.picker3d.outputs import label_folder
from cryopick.picker3d.prompt import Prompt, check_label, load_prompt, make_prompt

log = logging.getLogger(__name__)

DEFAULT_USER = "cryopick"
DEFAULT_SESSION = "0"  # copick's session of tool-made picks


def pick_copick(config: str | os.PathLike, prompts: Sequence[Prompt | str | os.PathLike], model=None, settings=None,
                output_dir: str | os.PathLike | None = None, formats=("relion5",), *,
                runs: Sequence[str] | None = None, voxel_spacing: float | None = None, tomo_type: str | None = None,
                user_id: str = DEFAULT_USER, session_id: str = DEFAULT_SESSION, adapted=(), **options) -> dict:
    """Pick the tomograms of a copick project's runs and write the picks back into it (see the module doc).

    ``runs``: run names (default: every run having the tomogram; a named run without it is an error);
    ``voxel_spacing`` (Å) and ``tomo_type`` may be left out when the runs hold only one; ``adapted``:
    ``.adapted.npz`` files (:mod:`cryopick.picker3d.questions`); other ``options`` go to
    :func:`~cryopick.picker3d.batch.pick_tomograms` (``redo``, ``overrides``, ``stride``, ...).

    Returns
    -------
    dict
        The ``pick3d`` summary, with ``source`` (the copick selection) and ``output_dir``.
    """
    from cryopick.picker3d.batch import pick_tomograms
    from cryopick.picker3d.pick import check_prompts
    from cryopick.picker3d.questions import pick_with_answers

    prompts = [p if isinstance(p, Prompt) else load_prompt(p) for p in prompts]
    check_prompts(prompts)
    user_id, session_id = C.check_id(user_id, "--user-id"), C.check_id(session_id, "--session-id")
    root = C.open_project(config)
    objects = [label_folder(p.label) for p in prompts]
    C.check_objects(root, objects, config)
    sources = C.find_tomograms(root, C.select_runs(root, runs, config), voxel_spacing, tomo_type,
                               explicit=runs is not None, config=config)
    spacing, kind = sources[0].voxel_spacing, sources[0].tomo_type
    if output_dir is None:
        overlay = C.local_overlay(root)
        if overlay is None:
            raise CryopickError(f"{config}: the project's overlay is not a local folder; give -o OUT for "
                                "cryopick's records of finished runs")
        output_dir, formats = records_dir(overlay, user_id, session_id), ()
        options["montage"] = False
    by_run = {s.name: s for s in sources}

    def write_back(name, picks, picked) -> dict:
        files = []
        for p, obj in zip(prompts, objects):
            table = picks.table[picks.table["label"] == p.label]
            files.append(C.write_picks(by_run[name].run, obj, table[["x", "y", "z"]].to_numpy(float) * spacing,
                                       table["score"].to_numpy(float), user_id=user_id, session_id=session_id,
                                       voxel_spacing=spacing))
        return {"copick": files}

    info = {"copick": {"tomo_type": kind, "voxel_spacing": spacing, "user_id": user_id, "session_id": session_id}}
    common = dict(sources=sources, on_picked=write_back, source_info=info)
    log.info("%s: %d run(s), %s tomograms at %g Å; picks as user %s, session %s", config, len(sources), kind,
             spacing, user_id, session_id)
    if adapted:
        return pick_with_answers(None, prompts, model, settings, output_dir, formats, adapted=adapted, **common,
                                 **options)
    return pick_tomograms(None, prompts, model, settings, output_dir, formats, **common, **options)


def prompt_from_copick(config: str | os.PathLike, run: str, object_name: str, *, user_id: str | None = None,
                       session_id: str | None = None, voxel_spacing: float | None = None,
                       tomo_type: str | None = None, label: str | None = None, at: Sequence = (),
                       **prompt_options) -> Prompt:
    """A prompt from the picks of ``object_name`` in copick run ``run`` (and any extra ``at`` positions,
    voxels), cut from the run's tomogram at ``voxel_spacing`` / ``tomo_type``; its label is ``label``
    (default: the object name, so that ``pick3d --copick`` writes its picks to that object).
    ``prompt_options`` go to :func:`~cryopick.picker3d.prompt.make_prompt`."""
    root = C.open_project(config)
    C.check_objects(root, [object_name], config)
    source = C.find_tomograms(root, C.select_runs(root, [run], config), voxel_spacing, tomo_type,
                              explicit=True, config=config)[0]
    picks = C.read_picks(source.run, object_name, source.voxel_spacing, user_id=user_id, session_id=session_id)
    positions = [*picks.coords.tolist(), *[list(p) for p in at]]
    if not positions:
        raise CryopickError(f"copick run {run}: the pick set of {object_name!r} is empty; pick an example first "
                            "or give --at x,y,z")
    label = label or object_name
    check_label(label)
    log.info("%s: %d example(s) of %s from copick run %s", label, len(picks), object_name, run)
    return make_prompt(source.read(), positions, label=label, **prompt_options)


def records_dir(overlay: str | os.PathLike, user_id: str = DEFAULT_USER, session_id: str = DEFAULT_SESSION) -> Path:
    """Where :func:`pick_copick` keeps its records without ``output_dir``, in a local project's overlay."""
    return Path(overlay) / "cryopick" / f"pick3d_{user_id}_{session_id}"
