"""Every reader, fed random bytes, random text, empty files, truncated copies of real files and files of
another format: either a valid result or a one-line CryopickError naming the file, never a traceback."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from cryopick.errors import CryopickError
from cryopick.io.coords import read_picks
from cryopick.io.images import read_image
from cryopick.picks import Picks

DATA = Path(__file__).parents[1] / "data" / "formats"
COORD_EXTENSIONS = (".star", ".csv", ".box", ".cbox", ".txt", ".coords", ".json")
IMAGE_EXTENSIONS = (".mrc", ".tif", ".png", ".jpg")
TEXT_ALPHABET = np.frombuffer(b"0123456789 .,;\t\n-+eE#_:abcxyzXYZ\"'", dtype=np.uint8)
ADVICE = ("allow_pickle", "file an issue", "Traceback", "Error could possibly")
REAL_FILES = sorted(p for p in DATA.rglob("*") if p.is_file() and p.suffix in COORD_EXTENSIONS)


def _check_error(exc: CryopickError, path: Path) -> None:
    text = str(exc)
    assert path.name in text, text
    assert "\n" not in text, text
    assert not any(a in text for a in ADVICE), text


def _read_coords(path: Path):
    return read_picks(path)


def _read_pixels(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_image(path).load()


def _outcome(reader, path: Path) -> str:
    try:
        result = reader(path)
    except CryopickError as exc:
        _check_error(exc, path)
        return "error"
    if isinstance(result, Picks):
        assert np.isfinite(result.coords).all()
    return "ok"


@pytest.mark.parametrize("ext", COORD_EXTENSIONS)
def test_random_bytes_and_text_coordinates(tmp_path, ext):
    rng = np.random.default_rng(sum(map(ord, ext)))
    for k in range(12):
        n = int(rng.integers(1, 3000))
        binary = rng.integers(0, 256, n, dtype=np.uint8)
        binary[0] = 0xFF  # never valid UTF-8: binary junk is always an error
        path = tmp_path / f"bin{k}{ext}"
        path.write_bytes(binary.tobytes())
        assert _outcome(_read_coords, path) == "error"
        path = tmp_path / f"text{k}{ext}"
        path.write_bytes(rng.choice(TEXT_ALPHABET, n).tobytes())
        _outcome(_read_coords, path)


@pytest.mark.parametrize("ext", COORD_EXTENSIONS)
def test_empty_coordinate_files(tmp_path, ext):
    path = tmp_path / f"empty{ext}"
    path.write_bytes(b"")
    outcome = _outcome(_read_coords, path)
    # Row formats without a header (EMAN2 .box, crYOLO legacy .cbox, IMOD .coords) state "no particle"
    # with an empty file; formats with a header need it.
    assert outcome == ("ok" if ext in (".box", ".cbox", ".coords") else "error")


@pytest.mark.parametrize("source", REAL_FILES, ids=lambda p: str(p.relative_to(DATA)))
def test_truncated_real_coordinate_files(tmp_path, source):
    data = source.read_bytes()
    for cut in sorted({1, 7, len(data) // 3, len(data) // 2, (2 * len(data)) // 3, len(data) - 2}):
        path = tmp_path / f"cut{cut}_{source.name}"
        path.write_bytes(data[:cut])
        _outcome(_read_coords, path)


@pytest.mark.parametrize("source", REAL_FILES, ids=lambda p: str(p.relative_to(DATA)))
def test_coordinate_files_under_the_wrong_extension(tmp_path, source):
    for ext in COORD_EXTENSIONS:
        if ext != source.suffix:
            path = tmp_path / f"wrong_{source.stem}{ext}"
            shutil.copy(source, path)
            _outcome(_read_coords, path)


def _real_images(directory: Path) -> list[Path]:
    import tifffile
    from PIL import Image as PILImage

    from cryopick.io.images import write_mrc

    image = (np.arange(48 * 40).reshape(48, 40) % 251).astype(np.uint8)
    write_mrc(directory / "a.mrc", image.astype(np.float32), pixel_size=1.0)
    tifffile.imwrite(directory / "a.tif", image.astype(np.uint16))
    PILImage.fromarray(image).save(directory / "a.png")
    PILImage.fromarray(image).save(directory / "a.jpg")
    return [directory / f"a{ext}" for ext in IMAGE_EXTENSIONS]


def test_image_readers_random_truncated_empty_and_wrong(tmp_path):
    rng = np.random.default_rng(7)
    sources = _real_images(tmp_path)
    for source in sources:
        ext = source.suffix
        data = source.read_bytes()
        for cut in sorted({0, 1, 10, 100, len(data) // 2, len(data) - 20}):
            path = tmp_path / f"cut{cut}{ext}"
            path.write_bytes(data[:cut])
            assert _outcome(_read_pixels, path) == "error", path
        for k in range(8):
            path = tmp_path / f"rand{k}{ext}"
            path.write_bytes(rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes())
            assert _outcome(_read_pixels, path) == "error", path
        for other in sources:
            if other.suffix != ext:  # another image format under this extension: an error or the right pixels
                path = tmp_path / f"wrong_{other.suffix[1:]}{ext}"
                shutil.copy(other, path)
                if _outcome(_read_pixels, path) == "ok":
                    assert _read_pixels(path).shape == (48, 40), path
        path = tmp_path / f"coords{ext}"
        shutil.copy(DATA / "eman2" / "mic_0001.box", path)
        assert _outcome(_read_pixels, path) == "error", path


def test_zarr_reader_rejects_files_and_empty_folders(tmp_path):
    (tmp_path / "junk.zarr").write_bytes(b"\x00\x01junk")
    (tmp_path / "empty.zarr").mkdir()
    for path in (tmp_path / "junk.zarr", tmp_path / "empty.zarr"):
        assert _outcome(_read_pixels, path) == "error", path
