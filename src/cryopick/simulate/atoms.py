"""Atomic models (PDB / mmCIF) as point clouds: atom positions in Å and element symbols."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryopick.errors import CryopickError

_ATOMIC_NUMBER = {"H": 1, "C": 6, "N": 7, "O": 8, "P": 15, "S": 16, "SE": 34, "FE": 26, "MG": 12,
                  "ZN": 30, "CA": 20, "NA": 11, "K": 19, "CL": 17, "MN": 25, "CU": 29}


def atomic_numbers(elements: list[str]) -> np.ndarray:
    """Atomic number per element symbol (carbon's 6 for symbols not in the table)."""
    return np.array([_ATOMIC_NUMBER.get(e, 6) for e in elements], dtype=np.float64)


def read_atoms(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Read atom positions (Å) and element symbols from a PDB or mmCIF file.

    PDB: fixed-column ``ATOM``/``HETATM`` records (x 31-38, y 39-46, z 47-54, element 77-78, falling
    back to the atom name). mmCIF: the ``_atom_site`` loop (``Cartn_x/y/z``, ``type_symbol``).
    Hydrogens and waters (HOH/WAT) are skipped; only the first model is read.
    """
    path = Path(path)
    if not path.exists():
        raise CryopickError(f"{path}: no such atomic model file")
    if path.is_dir():
        raise CryopickError(f"{path}: is a directory, expected a PDB or mmCIF atomic model file")
    text = path.read_text(errors="replace")
    suffix = path.suffix.lower()
    try:
        if suffix in (".cif", ".mmcif") or "_atom_site." in text[:200000]:
            coords, elements = _read_mmcif(text)
        else:
            coords, elements = _read_pdb(text)
    except CryopickError as exc:
        raise CryopickError(f"{path}: {exc}") from exc
    except (ValueError, IndexError) as exc:  # a number that is not one, an unclosed quote
        raise CryopickError(f"{path}: not a readable PDB / mmCIF atomic model ({str(exc).splitlines()[0]}); "
                            "is the file complete?") from exc
    if len(coords) == 0:
        raise CryopickError(f"{path}: no ATOM/HETATM records found; is it a PDB or mmCIF file?")
    return np.asarray(coords, dtype=np.float64), elements


def _read_pdb(text: str) -> tuple[list, list]:
    coords, elements = [], []
    for line in text.splitlines():
        record = line[:6].strip()
        if record == "ENDMDL":
            break
        if record not in ("ATOM", "HETATM") or line[17:20].strip() in ("HOH", "WAT"):
            continue
        element = line[76:78].strip().upper() if len(line) >= 78 else ""
        if not element:
            element = "".join(ch for ch in line[12:16] if ch.isalpha())[:1].upper()
        if element == "H":
            continue
        coords.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
        elements.append(element)
    return coords, elements


def _read_mmcif(text: str) -> tuple[list, list]:
    import shlex

    lines = text.splitlines()
    coords, elements = [], []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "loop_" and i + 1 < len(lines) and lines[i + 1].strip().startswith("_atom_site."):
            i += 1
            names = []
            while i < len(lines) and lines[i].strip().startswith("_atom_site."):
                names.append(lines[i].strip().split(".", 1)[1].split()[0])
                i += 1
            col = {n: k for k, n in enumerate(names)}
            for needed in ("Cartn_x", "Cartn_y", "Cartn_z"):
                if needed not in col:
                    raise CryopickError(f"mmCIF _atom_site loop lacks {needed}")
            first_model = None
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("loop_", "_", "#")):
                values = shlex.split(lines[i], posix=True)
                i += 1
                if len(values) != len(names):
                    continue
                if "pdbx_PDB_model_num" in col:
                    model = values[col["pdbx_PDB_model_num"]]
                    first_model = first_model or model
                    if model != first_model:
                        continue
                if "label_comp_id" in col and values[col["label_comp_id"]] in ("HOH", "WAT"):
                    continue
                element = values[col["type_symbol"]].upper() if "type_symbol" in col else (
                    values[col["label_atom_id"]][:1].upper() if "label_atom_id" in col else "C")
                if element in ("H", "D"):
                    continue
                coords.append(tuple(float(values[col[c]]) for c in ("Cartn_x", "Cartn_y", "Cartn_z")))
                elements.append(element)
            break
        i += 1
    return coords, elements
