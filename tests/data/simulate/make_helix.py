"""Regenerate the SYNTHETIC test models helix50.pdb and helix50.cif (not a real structure).

An idealised alpha-helix of 10 alanines (N, CA, C, O, CB per residue = 50 atoms): 100 degrees
and 1.5 Å rise per residue; atom radii/phases are approximate. Run: python make_helix.py
"""
import math

ATOMS = [("N", "N", 1.55, -28.0, -0.6), ("CA", "C", 2.30, 0.0, 0.0), ("C", "C", 1.60, 28.0, 0.55),
         ("O", "O", 1.90, 40.0, 1.6), ("CB", "C", 3.30, -10.0, 0.3)]
rows = []
serial = 0
for res in range(10):
    for name, element, radius, phase, dz in ATOMS:
        serial += 1
        a = math.radians(100.0 * res + phase)
        rows.append((serial, name, element, res + 1, radius * math.cos(a), radius * math.sin(a), 1.5 * res + dz))

with open("helix50.pdb", "w") as f:
    f.write("REMARK   1 SYNTHETIC idealised alpha-helix (10 ALA, 50 atoms) for cryopick tests; not a real structure\n")
    for s, name, el, res, x, y, z in rows:
        f.write(f"ATOM  {s:5d}  {name:<3s} ALA A{res:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00 20.00          {el:>2s}\n")
    f.write("HETATM   51  O   HOH A 101      10.000  10.000  10.000  1.00 20.00           O\n")
    f.write("END\n")

with open("helix50.cif", "w") as f:
    f.write("data_helix50\n# SYNTHETIC idealised alpha-helix (10 ALA, 50 atoms) for cryopick tests\nloop_\n")
    for col in ("group_PDB", "id", "type_symbol", "label_atom_id", "label_comp_id", "label_asym_id",
                "label_seq_id", "Cartn_x", "Cartn_y", "Cartn_z", "occupancy", "B_iso_or_equiv", "pdbx_PDB_model_num"):
        f.write(f"_atom_site.{col}\n")
    for s, name, el, res, x, y, z in rows:
        f.write(f"ATOM {s} {el} {name} ALA A {res} {x:.3f} {y:.3f} {z:.3f} 1.00 20.00 1\n")
    f.write("HETATM 51 O O HOH A . 10.000 10.000 10.000 1.00 20.00 1\n#\n")
