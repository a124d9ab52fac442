"""Tests of the simulator: particle classes, rotations, CTF, tomograms, micrographs, the CLI."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryopick.simulate import ctf as C
from cryopick.simulate import rotations as R
from cryopick.simulate.atoms import read_atoms
from cryopick.simulate.densities import ParticleClass, splat
from cryopick.simulate.micrograph import simulate_micrograph
from cryopick.simulate.shapes import SHAPE_KINDS
from cryopick.simulate.tomogram import missing_wedge_mask, random_particle_classes, simulate_tomogram

DATA = Path(__file__).parents[1] / "data" / "simulate"


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classes3d():
    return random_particle_classes(n=5, seed=0, voxel_size=10.0, diameter_range_A=(80, 240))


@pytest.fixture(scope="module")
def tomo(classes3d):
    return simulate_tomogram(classes3d, shape=(48, 96, 96), voxel_size=10.0, seed=1, n_particles=25,
                             membranes=1, gold_beads=3, snr=2.0, keep_clean=True)


@pytest.fixture(scope="module")
def classes2d():
    return random_particle_classes(n=2, seed=3, voxel_size=4.0, diameter_range_A=(120, 200))


@pytest.fixture(scope="module")
def mic(classes2d):
    return simulate_micrograph(classes2d, shape=(384, 384), pixel_size=4.0, seed=2, n_particles=25, dose=60.0,
                               carbon_edge=True, ice_crystals=2, aggregates=2, keep_clean=True)


# -- rotations ------------------------------------------------------------------------------------
def test_random_rotations_are_proper_and_uniform():
    rot = R.random_rotations(4000, np.random.default_rng(0))
    eye = np.einsum("nij,nkj->nik", rot, rot)
    assert np.allclose(eye, np.eye(3), atol=1e-10)
    assert np.allclose(np.linalg.det(rot), 1.0)
    # Haar measure: the mean rotation matrix is 0 and the z axis is uniform on the sphere.
    assert np.abs(rot.mean(0)).max() < 0.05
    cos_tilt = rot[:, 2, 2]
    assert abs(np.mean(cos_tilt < 0.5) - 0.75) < 0.03  # P(cos < 0.5) = 3/4 for uniform directions


def test_euler_round_trip():
    rot = R.random_rotations(50, np.random.default_rng(1))
    back = R.euler_zyz_to_matrix(R.matrix_to_euler_zyz(rot))
    assert np.allclose(back, rot, atol=1e-8)


def test_point_groups_have_the_right_order_and_closure():
    for ops, n in ((R.cyclic_group(5), 5), (R.dihedral_group(3), 6), (R.tetrahedral_group(), 12),
                   (R.octahedral_group(), 24)):
        assert len(ops) == n
        flat = ops.reshape(n, 9)
        for a in ops[:4]:
            for b in ops[:4]:
                prod = (a @ b).reshape(9)
                assert np.min(np.abs(flat - prod).max(1)) < 1e-9


# -- particle classes -----------------------------------------------------------------------------
def test_random_classes_are_different_and_span_sizes():
    a = random_particle_classes(n=10, seed=0, voxel_size=10.0, diameter_range_A=(100, 350))
    b = random_particle_classes(n=10, seed=1, voxel_size=10.0, diameter_range_A=(100, 350))
    assert len({c.kind for c in a}) == 10 == len(SHAPE_KINDS)
    diam = np.array([c.diameter for c in a])
    assert diam.min() >= 100 and diam.max() <= 350 and diam.max() / diam.min() > 2.5
    assert [c.name for c in a] != [c.name for c in b]
    # Same seed, same classes.
    again = random_particle_classes(n=10, seed=0, voxel_size=10.0, diameter_range_A=(100, 350))
    assert all(np.array_equal(x.points, y.points) for x, y in zip(a, again))
    for c in a:
        d = c.density
        assert d.ndim == 3 and d.shape[0] == d.shape[1] == d.shape[2]
        # Mass is conserved by rendering (weights are Å³ of protein, density 1 = protein).
        assert d.sum() * 10.0**3 == pytest.approx(float(c.weights.sum()), rel=0.02)


def test_symmetric_class_is_symmetric():
    c = random_particle_classes(n=10, seed=0, voxel_size=10.0)
    ring = next(x for x in c if x.kind in ("ring", "cyclic", "dihedral"))
    n = int(ring.symmetry[1:])
    # The projection along the symmetry axis (z) is invariant under a 360/n degree rotation.
    p0 = ring.project(5.0, box=96)
    p1 = ring.project(5.0, rotation=R.rotation_z(2 * np.pi / n), box=96)
    p_other = ring.project(5.0, rotation=R.rotation_z(np.pi / n / 2), box=96)
    assert np.abs(p0 - p1).mean() < 0.5 * np.abs(p0 - p_other).mean()


def test_splat_conserves_mass_and_places_points():
    pts = np.array([[3.25, 4.5, 2.0], [10.0, 0.0, 5.75]])
    grid = splat(pts, np.array([1.0, 2.0]), (8, 8, 16))
    assert grid.sum() == pytest.approx(3.0)
    z, y, x = np.indices(grid.shape)
    first = grid * (x < 8)
    assert (first * x).sum() / first.sum() == pytest.approx(3.25)
    assert (first * y).sum() / first.sum() == pytest.approx(4.5)


def test_read_pdb_and_mmcif_agree_and_skip_water():
    xyz_pdb, el_pdb = read_atoms(DATA / "helix50.pdb")
    xyz_cif, el_cif = read_atoms(DATA / "helix50.cif")
    assert len(xyz_pdb) == len(xyz_cif) == 50
    assert el_pdb == el_cif and el_pdb[:5] == ["N", "C", "C", "O", "C"]
    assert np.allclose(xyz_pdb, xyz_cif, atol=1e-3)
    cls = ParticleClass.from_atoms("helix", DATA / "helix50.pdb", voxel_size=1.0)
    assert 14.0 < cls.diameter < 20.0  # a 10-residue helix is ~15 Å long
    assert cls.density.sum() == pytest.approx(float(cls.weights.sum()), rel=0.02)


def test_read_atoms_rejects_non_models(tmp_path):
    bad = tmp_path / "x.pdb"
    bad.write_text("HELLO\n")
    from cryopick.errors import CryopickError

    with pytest.raises(CryopickError, match="x.pdb"):
        read_atoms(bad)


# -- CTF ------------------------------------------------------------------------------------------
def test_ctf_zeros_at_predicted_frequencies_and_dark_protein():
    df = 20000.0
    zeros = C.ctf_zeros(df, n=4)
    assert np.abs(C.ctf_1d(zeros, df, cs_mm=0.0)).max() < 1e-9
    # Between zeros the CTF is far from 0, and at low frequency it is negative (dark protein).
    mids = 0.5 * (zeros[1:] + zeros[:-1])
    assert np.abs(C.ctf_1d(mids, df, cs_mm=0.0)).min() > 0.5
    assert C.ctf_1d(np.array([1e-4]), df)[0] < 0


def test_ctf_2d_astigmatism_axes():
    du, dv, angle = 25000.0, 15000.0, 30.0
    ctf = C.ctf_2d((512, 512), 1.0, du, dv, angle, cs_mm=0.0, rfft=False)
    k_u = C.ctf_zeros(du, 1)[0]
    k_v = C.ctf_zeros(dv, 1)[0]
    a = np.radians(angle)
    # Sample along the u axis at k_u and along v at k_v (nearest grid point is enough with a tolerance).
    def at(k, theta):
        x, y = k * np.cos(theta) * 512, k * np.sin(theta) * 512
        return ctf[int(round(y)) % 512, int(round(x)) % 512]
    assert abs(at(k_u, a)) < 0.15 and abs(at(k_v, a + np.pi / 2)) < 0.15
    assert abs(at(k_u, a + np.pi / 2)) > 0.5  # the v direction is not at a zero there


# -- tomograms ------------------------------------------------------------------------------------
def test_tomogram_api_and_determinism(tomo, classes3d):
    assert tomo.volume.shape == (48, 96, 96) and tomo.volume.dtype == np.float32
    assert tomo.instance_mask.dtype == np.int32 and tomo.class_mask.dtype == np.int16
    assert tomo.picks.ndim == 3 and tomo.picks.pixel_size == 10.0
    assert len(tomo.picks) == tomo.params["n_placed"] > 10
    assert tomo.class_names == [c.name for c in classes3d]
    assert set(tomo.picks.table["label"]) <= set(tomo.class_names)
    again = simulate_tomogram(classes3d, shape=(48, 96, 96), voxel_size=10.0, seed=1, n_particles=25,
                              membranes=1, gold_beads=3, snr=2.0)
    assert np.array_equal(again.volume, tomo.volume)
    assert np.array_equal(again.instance_mask, tomo.instance_mask)
    other = simulate_tomogram(classes3d, shape=(48, 96, 96), voxel_size=10.0, seed=2, n_particles=25,
                              membranes=1, gold_beads=3, snr=2.0)
    assert not np.allclose(other.picks.coords[:5], tomo.picks.coords[:5])


def test_tomogram_picks_sit_on_dark_density(tomo):
    from scipy import ndimage

    background = tomo.clean[tomo.instance_mask == 0]
    x, y, z = np.round(tomo.picks.coords).astype(int).T
    # Protein is dark: every particle's mean over its occupancy is well below the background, and
    # the occupancy sits at the pick (checked in test_tomogram_masks_match_picks).
    means = ndimage.mean(tomo.clean, tomo.instance_mask, index=np.arange(1, len(tomo.picks) + 1))
    assert (means < np.median(background) - 0.5 * background.std()).all()
    # Same in the noisy volume, on a ball of half the radius around each pick (hollow classes aside).
    zz, yy, xx = np.indices(tomo.volume.shape)
    solid = [k for k, lab in enumerate(tomo.picks.table["label"]) if not lab.startswith(("shell", "ring", "cage"))]
    ball_means = []
    for k in solid:
        r = tomo.picks.table["diameter"][k] / 4
        ball = (xx - x[k]) ** 2 + (yy - y[k]) ** 2 + (zz - z[k]) ** 2 <= max(r, 1.0) ** 2
        ball_means.append(tomo.volume[ball].mean())
    assert np.median(ball_means) < np.median(tomo.volume[tomo.instance_mask == 0]) - 0.2
    # Particles lie fully inside the volume.
    coords = tomo.picks.coords
    assert (coords >= 0).all() and (coords <= np.array([95, 95, 47])).all()


def test_tomogram_masks_match_picks(tomo):
    names = tomo.class_names
    coords = tomo.picks.coords
    for k in range(len(tomo.picks)):
        zz, yy, xx = np.nonzero(tomo.instance_mask == k + 1)
        assert len(xx) > 0
        centroid = np.array([xx.mean(), yy.mean(), zz.mean()])
        radius = tomo.picks.table["diameter"][k] / 2
        assert np.linalg.norm(centroid - coords[k]) < max(1.5, 0.35 * radius)
        cls = np.unique(tomo.class_mask[zz, yy, xx])
        assert cls.tolist() == [names.index(tomo.picks.table["label"][k]) + 1]
    assert np.array_equal(tomo.instance_mask > 0, tomo.class_mask > 0)


def test_tomogram_distractors_are_not_picks(tomo):
    beads = [d for d in tomo.distractors if d["kind"] == "gold"]
    vesicles = [d for d in tomo.distractors if d["kind"] == "vesicle"]
    assert beads and vesicles
    coords = tomo.picks.coords
    radii = tomo.picks.table["diameter"].to_numpy() / 2
    for b in beads:
        d = np.linalg.norm(coords - b["centre"], axis=1)
        assert (d >= radii + b["radius"] - 1e-6).all()
        cx, cy, cz = np.round(b["centre"]).astype(int)
        assert tomo.instance_mask[cz, cy, cx] == 0
        # Gold is much darker than protein.
        assert tomo.clean[cz, cy, cx] < tomo.clean[tomo.instance_mask > 0].min()


def test_missing_wedge_in_fourier_transform(tomo):
    power = np.abs(np.fft.rfftn(tomo.volume)) ** 2
    kz = np.fft.fftfreq(48)[:, None, None]
    kx = np.fft.rfftfreq(96)[None, None, :]
    k = np.sqrt(kz**2 + kx**2)
    angle = np.degrees(np.arctan2(np.abs(kz), kx))  # from the kx axis
    in_wedge = (angle > 60.0 + 3) & (k > 0.05) & np.ones_like(power, bool)
    measured = (angle < 60.0 - 3) & (k > 0.05) & np.ones_like(power, bool)
    assert power[in_wedge].mean() < 1e-8 * power[measured].mean()
    # The mask function itself: full range means no wedge; the ky axis is always measured.
    assert missing_wedge_mask((8, 8, 8), (-90, 90)).all()
    assert missing_wedge_mask((8, 8, 8), (-30, 30))[0, :, 0].all()


# -- micrographs ----------------------------------------------------------------------------------
def test_micrograph_api_and_determinism(mic, classes2d):
    assert mic.image.shape == (384, 384) and mic.image.dtype == np.float32
    assert mic.picks.ndim == 2 and mic.pixel_size == 4.0 and len(mic.picks) > 5
    again = simulate_micrograph(classes2d, shape=(384, 384), pixel_size=4.0, seed=2, n_particles=25, dose=60.0,
                                carbon_edge=True, ice_crystals=2, aggregates=2)
    assert np.array_equal(again.image, mic.image)
    assert (mic.image >= 0).all() and np.allclose(mic.image, np.round(mic.image))  # counts


def test_micrograph_picks_dark_and_distractors_unlabelled(mic):
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(mic.clean, 2.0)
    x, y = np.round(mic.picks.coords).astype(int).T
    free = (mic.mask == 0) & (mic.distractor_mask == 0)
    assert np.median(smooth[y, x]) < np.median(smooth[free])
    # No pick lies on carbon, an ice crystal or an aggregate.
    assert (mic.distractor_mask[y, x] == 0).all()
    assert {1, 2, 3} <= set(np.unique(mic.distractor_mask).tolist())
    # The particle support mask is centred on its pick.
    for k in range(len(mic.picks)):
        yy, xx = np.nonzero(mic.mask == k + 1)
        assert np.hypot(xx.mean() - mic.picks.coords[k, 0], yy.mean() - mic.picks.coords[k, 1]) < 0.3 * mic.picks.table["diameter"][k]


def test_micrograph_shot_noise_is_poisson():
    cls = random_particle_classes(1, seed=0, voxel_size=2.0, diameter_range_A=(100, 100))
    for dqe in (1.0, 0.5):
        m = simulate_micrograph(cls, shape=(128, 128), pixel_size=2.0, seed=0, n_particles=0, dose=20.0,
                                ice_noise=0.0, clutter_A=0.0, ice_gradient=0.0, dqe=dqe, keep_clean=True)
        residual = m.image - m.clean
        assert residual.var() / m.clean.mean() == pytest.approx(1.0, abs=0.1)
        expected = 20.0 * dqe * 4 * np.exp(-m.params["ice_thickness_A"] / 3800)
        assert m.image.mean() == pytest.approx(expected, rel=0.05)


def test_micrograph_thon_rings_at_ctf_zeros():
    cls = random_particle_classes(1, seed=0, voxel_size=2.0, diameter_range_A=(100, 100))
    m = simulate_micrograph(cls, shape=(512, 512), pixel_size=2.0, seed=0, n_particles=0, dose=2000.0,
                            defocus_um=2.0, astigmatism_um=0.0, ice_gradient=0.0, bfactor=0.0)
    power = np.abs(np.fft.fftshift(np.fft.fft2(m.image - m.image.mean()))) ** 2
    k, prof = C.radial_profile(power, 2.0, n_bins=256)
    zeros = C.ctf_zeros(2e4, n=4)
    at_zero = np.array([prof[np.argmin(np.abs(k - z))] for z in zeros])
    maxima = np.sqrt(0.5 * (zeros[1:] ** 2 + zeros[:-1] ** 2))  # CTF maxima lie midway in k^2
    at_max = np.array([prof[np.argmin(np.abs(k - q))] for q in maxima])
    assert (at_zero[1:] < 0.6 * at_max).all()


# -- CLI ------------------------------------------------------------------------------------------
def test_cli_2d_writes_resumes_and_reads_back(tmp_path):
    from cryopick.cli.main import main
    from cryopick.io.coords import read_picks
    from cryopick.io.images import read_micrograph
    from cryopick.simulate.dataset import read_ground_truth

    out = tmp_path / "sim2d"
    args = ["simulate", "2d", "-o", str(out), "--n", "2", "--seed", "0", "--shape", "192", "192",
            "--pixel-size", "4", "--particles", "10"]
    assert main(args) == 0
    mrc = out / "micrographs" / "mic_00000.mrc"
    image = read_micrograph(mrc)
    assert image.shape == (192, 192) and image.pixel_size == pytest.approx(4.0)
    truth = read_ground_truth(out)
    star = read_picks(out / "coordinates" / "mic_00000_autopick.star")
    first = truth.for_micrograph("mic_00000")
    assert np.allclose(star.coords, first.coords, atol=1e-4)
    assert set(truth.table["label"]) <= set(np.loadtxt(out / "classes.csv", delimiter=",", skiprows=1, dtype=str, usecols=1, ndmin=1))
    stamp = mrc.stat().st_mtime_ns
    assert main(args[:5] + ["3"] + args[6:]) == 0  # resume: one more, the first untouched
    assert mrc.stat().st_mtime_ns == stamp
    assert (out / "micrographs" / "mic_00002.mrc").exists()


def test_cli_3d_writes_masks_and_per_class_coordinates(tmp_path):
    from cryopick.cli.main import main
    from cryopick.simulate.dataset import read_ground_truth

    out = tmp_path / "sim3d"
    assert main(["simulate", "3d", "-o", str(out), "--n", "1", "--shape", "32", "64", "64", "--classes", "3",
                 "--diameter", "60", "150", "--particles", "8"]) == 0
    with mrcfile.open(out / "masks" / "tomo_0000_instances.mrc") as f:
        inst = f.data.copy()
        assert float(f.voxel_size.x) == pytest.approx(10.0)
    truth = read_ground_truth(out)
    assert truth.ndim == 3 and inst.max() == len(truth)
    class_dirs = sorted(p.name for p in (out / "coordinates").iterdir())
    assert class_dirs == sorted(np.loadtxt(out / "classes.csv", delimiter=",", skiprows=1, dtype=str, usecols=1))


# -- placement shortfall and option checks ----------------------------------------------------------
def test_micrograph_shortfall_is_a_warning_with_the_numbers(classes2d):
    from cryopick.simulate.placement import PlacementWarning

    with pytest.warns(PlacementWarning, match=r"crowded: placed (\d+) of 400 requested particles.*fill \d+% "
                                              r"of the micrograph's area.*--particles"):
        m = simulate_micrograph(classes2d, shape=(128, 128), pixel_size=4.0, seed=0, n_particles=400, dose=20.0,
                                name="crowded")
    assert 0 < m.params["n_placed"] == len(m.picks) < m.params["n_requested"] == 400


def test_tomogram_shortfall_is_a_warning(classes3d):
    from cryopick.simulate.placement import PlacementWarning

    with pytest.warns(PlacementWarning, match=r"tiny: placed \d+ of 300 requested particles.*tomogram's volume"):
        t = simulate_tomogram(classes3d, shape=(32, 48, 48), voxel_size=10.0, seed=0, n_particles=300,
                              membranes=0, gold_beads=0, name="tiny")
    assert t.params["n_placed"] == len(t.picks) < 300


def test_tomogram_exact_counts_per_class(classes3d):
    """``counts``: exactly that many particles of each class (the sparse tomogram of bench_answers3d.py),
    the too-large classes left out of the quota; a wrong length is refused with its message."""
    from cryopick import CryopickError
    from cryopick.simulate.placement import ClassTooLargeWarning

    t = simulate_tomogram(classes3d, shape=(48, 96, 96), voxel_size=10.0, seed=4, counts=[3, 0, 2, 3, 1],
                          membranes=0, gold_beads=0)
    got = t.picks.table["label"].value_counts().to_dict()
    assert got == {c.name: n for c, n in zip(classes3d, [3, 0, 2, 3, 1]) if n}
    big = max(classes3d, key=lambda c: c.diameter)  # 23 voxels: does not fit 16 voxels of depth
    with pytest.warns(ClassTooLargeWarning):
        t = simulate_tomogram(classes3d, shape=(16, 48, 48), voxel_size=10.0, seed=0, counts=[2] * 5, membranes=0,
                              gold_beads=0)
    assert big.name not in set(t.picks.table["label"]) and len(t.picks) == 2 * sum(
        c.diameter / 10.0 <= 15 for c in classes3d)
    with pytest.raises(CryopickError, match="counts must have one non-negative number per class"):
        simulate_tomogram(classes3d, shape=(16, 48, 48), counts=[1, 2])


def test_classes_larger_than_the_image_are_left_out_or_refused(classes3d):
    from cryopick import CryopickError
    from cryopick.simulate.placement import ClassTooLargeWarning

    big = max(classes3d, key=lambda c: c.diameter)  # 226 Å = 23 voxels: does not fit 16 voxels of depth
    with pytest.warns(ClassTooLargeWarning, match=rf"{big.name} \(23 px\).* do not fit the 16 x 48 x 48-pixel tomogram"):
        t = simulate_tomogram(classes3d, shape=(16, 48, 48), voxel_size=10.0, seed=0, n_particles=5, membranes=0,
                              gold_beads=0)
    assert big.name not in set(t.picks.table["label"])
    with pytest.raises(CryopickError, match=r"no particle class fits the 16 x 16-pixel micrograph"):
        simulate_micrograph([big], shape=(16, 16), pixel_size=10.0, n_particles=3)


def test_cli_reports_placed_particles_once_and_in_summary(tmp_path, capsys, recwarn):
    import json

    from cryopick.cli.main import main
    from cryopick.simulate.placement import PlacementWarning

    out = tmp_path / "full"
    assert main(["simulate", "2d", "-o", str(out), "--n", "2", "--shape", "96", "96", "--pixel-size", "4",
                 "--particles", "300", "--ice-crystals", "0", "--aggregates", "0"]) == 0
    placement = [w for w in recwarn if issubclass(w.category, PlacementWarning)]
    assert len(placement) == 1  # one warning for the data set, not one per micrograph
    assert "2 of 2 micrographs got fewer particles than requested" in str(placement[0].message)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_requested"] == 600 and 0 < summary["n_placed"] < 600
    assert summary["items"]["mic_00000"]["n_placed"] < 300
    assert f"{summary['n_placed']} particles placed of 600 requested" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["--pixel-size", "-2"], ["--pixel-size", "nan"], ["--n", "0"], ["--seed", "-1"], ["--particles", "-5"],
    ["--shape", "0", "64"], ["--crowding", "1.5"], ["--diameter", "0", "10"], ["--defocus", "-1", "2"],
    ["--dose", "0", "10"], ["--carbon-edge-fraction", "2"], ["--ice-crystals", "-1"], ["--classes", "-1"],
])
def test_cli_numeric_options_are_validated(tmp_path, capsys, argv):
    from cryopick.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["simulate", "2d", "-o", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and argv[0] in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode, argv, pattern", [
    ("2d", ["--diameter", "300", "100"], r"--diameter MIN MAX: MIN \(300\) is larger than MAX \(100\)"),
    ("3d", ["--tilt-range", "-100", "50"], r"--tilt-range must lie within -90 .. 90"),
    ("2d", ["--shape", "8", "8"], r"micrograph shape \(MicrographSimulation.shape\) must be 2 sizes >= 16 pixels"),
    ("3d", ["--shape", "64", "64"], r"--shape needs 3 numbers"),
])
def test_cli_inconsistent_options_leave_no_output(tmp_path, capsys, mode, argv, pattern):
    import re

    from cryopick.cli.main import main

    assert main(["simulate", mode, "-o", str(tmp_path / "out"), "--n", "1", *argv]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]  # (other lines: the progress bar)
    assert len(errors) == 1 and re.search(pattern, errors[0]) and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source", ["helix50.pdb", "helix50.cif"])
def test_atom_reader_truncated_and_random_files(tmp_path, source):
    """Truncated or garbled atomic models: atoms or a one-line error naming the file, never a traceback."""
    from cryopick import CryopickError

    data = (DATA / source).read_bytes()
    rng = np.random.default_rng(0)
    bad = data.replace(b"ATOM  ", b"ATOM  ", 1)
    cases = [data[:cut] for cut in (0, 40, len(data) // 3, len(data) // 2, len(data) - 7)]
    cases += [rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(), bad.replace(b".", b"x", 40)]
    if source.endswith(".cif"):
        cases.append(data.replace(b"ATOM ", b"ATOM 'unclosed ", 3))
    for k, content in enumerate(cases):
        path = tmp_path / f"case{k}{Path(source).suffix}"
        path.write_bytes(content)
        try:
            coords, elements = read_atoms(path)
        except CryopickError as exc:
            assert path.name in str(exc) and "\n" not in str(exc)
        else:
            assert np.isfinite(coords).all() and len(coords) == len(elements) > 0
