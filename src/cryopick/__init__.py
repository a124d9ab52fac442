"""cryopick: few-shot particle picking for cryo-EM micrographs (2D) and cryo-ET tomograms (3D).

>>> import cryopick
>>> card = cryopick.train_from_files("mics/", "manual/", diameter=108, output_dir="model/")   # 2D
>>> picker = cryopick.Picker("model/"); picker.set_image("mic_0001.mrc"); picks = picker.predict()
>>> prompt = cryopick.make_prompt("TS_01.mrc", [(412, 388, 96)], label="ribosome")            # 3D
>>> picks3d = cryopick.pick_tomogram("TS_02.mrc", [prompt])
>>> cryopick.write_picks(picks, "picks/", format="relion")

The names below are imported on first use, so ``import cryopick`` stays light (no PyTorch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from cryopick._version import __version__
from cryopick.errors import CryopickError
from cryopick.picks import Picks

_LAZY = {
    "Picker": "cryopick.picker2d.pick",
    "train_from_files": "cryopick.picker2d.train",
    "TomogramPicker": "cryopick.picker3d.pick",
    "pick_tomogram": "cryopick.picker3d.pick",
    "make_prompt": "cryopick.picker3d.prompt",
    "load_prompt": "cryopick.picker3d.prompt",
    "save_prompt": "cryopick.picker3d.prompt",
    "read_picks": "cryopick.io.coords",
    "write_picks": "cryopick.io.coords",
}

__all__ = [
    "CryopickError", "Picks", "Picker", "TomogramPicker", "__version__", "load_prompt", "make_prompt",
    "pick_tomogram", "read_picks", "save_prompt", "train_from_files", "write_picks",
]

if TYPE_CHECKING:
    from cryopick.io.coords import read_picks, write_picks
    from cryopick.picker2d.pick import Picker
    from cryopick.picker2d.train import train_from_files
    from cryopick.picker3d.pick import TomogramPicker, pick_tomogram
    from cryopick.picker3d.prompt import load_prompt, make_prompt, save_prompt


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cryopick' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
