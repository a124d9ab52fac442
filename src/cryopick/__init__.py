"""cryopick: few-shot particle picking for cryo-EM micrographs and cryo-ET tomograms."""

from cryopick.errors import CryopickError
from cryopick.picks import Picks

__all__ = ["CryopickError", "Picks", "__version__"]
__version__ = "0.1.0"
