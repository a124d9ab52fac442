"""Image readers: every MRC mode, IMOD unsigned bytes, TIFF/PNG 16-bit, OME-Zarr, and bad files."""

from __future__ import annotations

import warnings

import mrcfile
import numpy as np
import pytest

from cryopick import CryopickError
from cryopick.io.images import (
    MissingPixelSizeWarning,
    read_image,
    read_micrograph,
    read_tomogram,
    write_mrc,
    write_ome_zarr,
)


def _ramp(dtype, shape=(24, 32)) -> np.ndarray:
    return (np.arange(np.prod(shape)).reshape(shape) % 97).astype(dtype)


@pytest.mark.parametrize("dtype, mode", [(np.int8, 0), (np.int16, 1), (np.float32, 2), (np.uint16, 6),
                                         (np.float16, 12)])
def test_mrc_modes(tmp_path, dtype, mode):
    data = _ramp(dtype)
    write_mrc(tmp_path / "m.mrc", data, pixel_size=1.77)
    assert mrcfile.open(tmp_path / "m.mrc", header_only=True).header.mode == mode
    image = read_micrograph(tmp_path / "m.mrc")
    assert image.data.dtype == dtype and image.shape == (24, 32)
    np.testing.assert_array_equal(np.asarray(image.data), data)
    assert image.pixel_size == pytest.approx(1.77, abs=1e-5)
    assert image.name == "m"


def test_imod_mode0_unsigned_bytes(tmp_path):
    data = np.array([[200, 10], [255, 0]], dtype=np.uint8)
    path = tmp_path / "imod.mrc"
    write_mrc(path, data.view(np.int8), pixel_size=2.0)
    raw = bytearray(path.read_bytes())
    raw[152:160] = np.array([1146047817, 0], dtype="<i4").tobytes()  # IMOD stamp, flags: unsigned bytes
    path.write_bytes(bytes(raw))
    image = read_image(path)
    assert image.data.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(image.data), data)


def test_mrc_without_pixel_size_warns(tmp_path):
    write_mrc(tmp_path / "nops.mrc", _ramp(np.float32))
    with pytest.warns(MissingPixelSizeWarning, match="nops.mrc: no pixel size"):
        image = read_image(tmp_path / "nops.mrc")
    assert image.pixel_size is None


def test_truncated_and_corrupt_mrc(tmp_path):
    write_mrc(tmp_path / "full.mrc", _ramp(np.float32, (8, 64, 64)), pixel_size=1.0)
    raw = (tmp_path / "full.mrc").read_bytes()
    (tmp_path / "cut.mrc").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CryopickError, match=r"cut.mrc: truncated MRC, the header announces 64 x 64 x 8 float32"):
        read_image(tmp_path / "cut.mrc")
    (tmp_path / "tiny.mrc").write_bytes(raw[:300])
    with pytest.raises(CryopickError, match=r"tiny.mrc: only 300 bytes"):
        read_image(tmp_path / "tiny.mrc")
    (tmp_path / "text.mrc").write_text("this is not an image\n" * 100)
    with pytest.raises(CryopickError, match=r"text.mrc: not an MRC file"):
        read_image(tmp_path / "text.mrc")
    bad_mode = bytearray(raw)
    bad_mode[12:16] = np.array([4], dtype="<i4").tobytes()
    (tmp_path / "complex.mrc").write_bytes(bytes(bad_mode))
    with pytest.raises(CryopickError, match=r"complex.mrc: MRC mode 4 \(complex float32\) is not supported"):
        read_image(tmp_path / "complex.mrc")


def test_mrc_header_smaller_than_the_data_is_rejected(tmp_path):
    """A header saying 100 x 100 on a file holding 384 x 384 floats must not be read as 100 x 100."""
    write_mrc(tmp_path / "big.mrc", np.ones((384, 384), np.float32))
    with mrcfile.open(tmp_path / "big.mrc", mode="r+", permissive=True) as mrc:
        mrc.header.nx, mrc.header.ny = 100, 100
    with pytest.raises(CryopickError, match=r"big.mrc: the MRC header announces 100 x 100 x 1 float32 .* bytes more"):
        read_micrograph(tmp_path / "big.mrc")


def test_error_messages_are_one_line(tmp_path):
    (tmp_path / "x.mrc").write_bytes(b"\x00" * 2000)
    with pytest.raises(CryopickError) as info:
        read_image(tmp_path / "x.mrc")
    assert "x.mrc" in str(info.value) and "\n" not in str(info.value)


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "a.xyz").write_bytes(b"123")
    with pytest.raises(CryopickError, match=r"a.xyz: unknown image format '.xyz'"):
        read_image(tmp_path / "a.xyz")
    with pytest.raises(CryopickError, match=r"gone.mrc: no such file"):
        read_image(tmp_path / "gone.mrc")


def test_tiff_and_png_16_bit(tmp_path):
    import tifffile
    from PIL import Image as PILImage

    data = (_ramp(np.uint16) * 600).astype(np.uint16)
    assert data.max() > 255
    tifffile.imwrite(tmp_path / "m.tif", data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingPixelSizeWarning)
        t = read_micrograph(tmp_path / "m.tif")
        PILImage.fromarray(data).save(tmp_path / "m.png")
        p = read_micrograph(tmp_path / "m.png")
    np.testing.assert_array_equal(t.data, data)
    np.testing.assert_array_equal(p.data.astype(np.uint16), data)
    tifffile.imwrite(tmp_path / "ps.tif", data, resolution=(1e8 / 1.5, 1e8 / 1.5), resolutionunit="CENTIMETER")
    assert read_image(tmp_path / "ps.tif").pixel_size == pytest.approx(1.5, rel=1e-6)


def test_ome_zarr(tmp_path):
    import zarr

    vol = _ramp(np.float32, (6, 16, 20))
    write_ome_zarr(tmp_path / "t.zarr", vol, pixel_size=10.0, chunks=(4, 8, 8))
    image = read_tomogram(tmp_path / "t.zarr")
    assert image.pixel_size == 10.0 and image.shape == (6, 16, 20)
    np.testing.assert_array_equal(np.asarray(image.data[:]), vol)
    g = zarr.open_group(str(tmp_path / "nm.zarr"), mode="w")  # NGFF 0.4, nanometres, with a size-1 channel axis
    g.create_dataset("s0", data=vol[None])
    g.attrs["multiscales"] = [{"version": "0.4",
                               "axes": [{"name": "c", "type": "channel"}] +
                                       [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
                               "datasets": [{"path": "s0", "coordinateTransformations":
                                             [{"type": "scale", "scale": [1, 0.8, 0.8, 0.8]}]}]}]
    image = read_tomogram(tmp_path / "nm.zarr")
    assert image.pixel_size == pytest.approx(8.0) and image.shape == (6, 16, 20)
    g.attrs["multiscales"] = [{**g.attrs["multiscales"][0], "datasets": [{"path": "s9"}]}]
    with pytest.raises(CryopickError, match=r"nm.zarr: OME-Zarr level 's9' is missing"):
        read_image(tmp_path / "nm.zarr")


def test_dimensionality_checks(tmp_path):
    write_mrc(tmp_path / "vol.mrc", _ramp(np.float32, (4, 8, 8)), pixel_size=1.0)
    write_mrc(tmp_path / "img.mrc", _ramp(np.float32), pixel_size=1.0)
    with pytest.raises(CryopickError, match=r"vol.mrc: expected a 2D micrograph"):
        read_micrograph(tmp_path / "vol.mrc")
    with pytest.raises(CryopickError, match=r"img.mrc: expected a 3D tomogram"):
        read_tomogram(tmp_path / "img.mrc")
