"""Reading and writing micrographs, stacks and tomograms.

Every reader returns an :class:`Image`: the pixel array (numpy ``[z][y][x]`` order, as stored —
memory-mapped for MRC and Zarr, so large files are not loaded until used) and the pixel size in Å
(``None`` when the file does not state it; a warning says so).

Supported: MRC/MRCS/REC/ST (modes 0, 1, 2, 6, 12), TIFF, PNG and JPEG (8- and 16-bit), OME-Zarr.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryopick.errors import CryopickError
from cryopick.io.atomic import atomic_path, publish

MRC_SUFFIXES = {".mrc", ".mrcs", ".rec", ".st", ".map"}
TIFF_SUFFIXES = {".tif", ".tiff"}
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg"}
IMAGE_SUFFIXES = MRC_SUFFIXES | TIFF_SUFFIXES | RASTER_SUFFIXES
ZARR_SUFFIXES = {".zarr"}


class MissingPixelSizeWarning(UserWarning):
    """The file does not state its pixel size (PNG and JPEG never do): said once per run by the
    command line and the app (:func:`cryopick.runtime.show_warnings`), not once per file."""

    once_per_run = True


@dataclass
class Image:
    """Pixels plus what we know about their sampling.

    Attributes
    ----------
    data
        ``(H, W)`` for a micrograph, ``(N, H, W)`` for a stack, ``(D, H, W)`` for a tomogram.
        May be a read-only memory map; call :meth:`load` for an in-memory float32 copy.
    pixel_size
        Å per pixel, or ``None`` when unknown.
    path
        The file it came from.
    """

    data: np.ndarray
    pixel_size: float | None
    path: Path

    @property
    def name(self) -> str:
        return image_name(self.path)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def load(self) -> np.ndarray:
        """Return the pixels as an in-memory float32 array, checked for NaN/inf."""
        arr = np.asarray(self.data, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise CryopickError(
                f"{self.path}: contains NaN or infinite pixel values; re-export the image or mask the bad pixels"
            )
        return np.array(arr, copy=True) if arr is self.data else arr


def _image_suffix(name: str) -> str | None:
    """The known image suffix ``name`` ends with (longest first: ``.ome.zarr`` before ``.zarr``), or ``None``."""
    lower = name.lower()
    return next((s for s in sorted(IMAGE_SUFFIXES | ZARR_SUFFIXES | {".ome.zarr"}, key=len, reverse=True)
                 if lower.endswith(s)), None)


def image_name(path: str | os.PathLike) -> str:
    """Micrograph name used to match images with coordinate files: the file name without its suffix."""
    p = Path(path)
    suffix = _image_suffix(p.name)
    return p.name[: -len(suffix)] if suffix else p.stem


def strip_image_suffix(name: str) -> str:
    """``name`` without a known image suffix (``a.mrc`` -> ``a``); any other name is kept whole, so
    micrograph names with dots (``mic_001.frames``, ``grid1.2_0003``) are not cut."""
    suffix = _image_suffix(name)
    return name[: -len(suffix)] if suffix and len(name) > len(suffix) else name


def list_images(directory_or_files: str | os.PathLike | list, suffixes: set[str] | None = None) -> list[Path]:
    """Image files in a directory (sorted), a glob pattern, or a list of paths."""
    suffixes = suffixes or IMAGE_SUFFIXES
    if isinstance(directory_or_files, (list, tuple)):
        paths = [Path(p) for p in directory_or_files]
    else:
        p = Path(directory_or_files)
        if p.is_dir():
            paths = sorted(q for q in p.iterdir() if _suffix(q) in suffixes)
        elif any(ch in str(p) for ch in "*?["):
            paths = sorted(q for q in Path(p.anchor or ".").glob(str(p.relative_to(p.anchor)) if p.anchor else str(p)))
        else:
            paths = [p]
    for q in paths:
        if not q.exists():
            raise CryopickError(f"{q}: no such file or directory")
    if not paths:
        raise CryopickError(
            f"{directory_or_files}: no images found (looked for {', '.join(sorted(suffixes))})"
        )
    return paths


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".ome.zarr") or name.endswith(".zarr"):
        return ".zarr"
    return path.suffix.lower()


def read_image(path: str | os.PathLike, mmap: bool = True) -> Image:
    """Read any supported micrograph, stack or tomogram.

    Raises
    ------
    CryopickError
        Missing file, unknown extension, corrupt or truncated file.
    """
    path = Path(path)
    if not path.exists():
        raise CryopickError(f"{path}: no such file")
    suffix = _suffix(path)
    try:
        if suffix in MRC_SUFFIXES:
            return _read_mrc(path, mmap)
        if suffix in TIFF_SUFFIXES:
            return _read_tiff(path)
        if suffix in RASTER_SUFFIXES:
            return _read_raster(path)
        if suffix in ZARR_SUFFIXES:
            return _read_ome_zarr(path)
    except CryopickError:
        raise
    except Exception as exc:  # corrupt files surface as many different library errors
        raise CryopickError(
            f"{path}: cannot read as {suffix[1:].upper()} ({_first_line(exc)}); is the file complete and of that type?"
        ) from exc
    raise CryopickError(
        f"{path}: unknown image format {suffix!r}; supported: {', '.join(sorted(IMAGE_SUFFIXES | ZARR_SUFFIXES))}"
    )


def read_micrograph(path: str | os.PathLike) -> Image:
    """Read a single 2D micrograph (a one-section MRC is accepted)."""
    image = read_image(path)
    if image.data.ndim == 3 and image.data.shape[0] == 1:
        image.data = image.data[0]
    if image.data.ndim != 2:
        raise CryopickError(
            f"{image.path}: expected a 2D micrograph, found shape {image.shape}; "
            "for stacks or tomograms use the stack / 3D commands"
        )
    return image


def read_tomogram(path: str | os.PathLike) -> Image:
    """Read a 3D tomogram (MRC or OME-Zarr), memory-mapped."""
    image = read_image(path)
    if image.data.ndim != 3 or min(image.data.shape) < 2:
        raise CryopickError(f"{image.path}: expected a 3D tomogram, found shape {image.shape}")
    return image


def _warn_missing_pixel_size(path: Path) -> None:
    warnings.warn(
        f"{path}: no pixel size in the file header; give it explicitly (e.g. --pixel-size)",
        MissingPixelSizeWarning,
        stacklevel=3,
    )


MRC_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
_IMOD_STAMP = 1146047817  # "IMOD" at header byte 152; bit 0 of the flags at byte 156 set = signed bytes


def _check_mrc_header(path: Path):
    """Validate an MRC header against the file before memory-mapping it.

    Returns the header; raises a :class:`CryopickError` naming the problem for a file that is too
    short, has an unsupported mode, impossible dimensions or less data than the header announces.
    """
    import mrcfile

    size = path.stat().st_size
    if size < 1024:
        raise CryopickError(f"{path}: only {size} bytes, shorter than the 1024-byte MRC header; the file is truncated")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with mrcfile.open(path, mode="r", header_only=True, permissive=True) as mrc:
                header = mrc.header.copy()
        except Exception as exc:
            raise CryopickError(f"{path}: not a readable MRC header ({_first_line(exc)}); is it an MRC file?") from exc
    mode = int(header.mode)
    if mode not in MRC_MODES and bytes(header.map) != b"MAP ":
        raise CryopickError(f"{path}: not an MRC file (no 'MAP ' identifier, invalid mode {mode}) or a corrupt header")
    if mode not in MRC_MODES:
        kind = {3: "complex int16", 4: "complex float32", 101: "4-bit packed"}.get(mode, "unknown")
        raise CryopickError(
            f"{path}: MRC mode {mode} ({kind}) is not supported (modes 0, 1, 2, 6, 12 are); the header may be "
            "corrupt, or convert the file to float32 (mode 2)"
        )
    nx, ny, nz, nsymbt = (int(header.nx), int(header.ny), int(header.nz), int(header.nsymbt))
    if min(nx, ny, nz) < 1 or nsymbt < 0:
        raise CryopickError(f"{path}: impossible MRC dimensions {nx} x {ny} x {nz}; the header is corrupt")
    expected = 1024 + nsymbt + nx * ny * nz * np.dtype(MRC_MODES[mode]).itemsize
    if size < expected:
        raise CryopickError(
            f"{path}: truncated MRC, the header announces {nx} x {ny} x {nz} {MRC_MODES[mode]} "
            f"({expected} bytes) but the file has {size} bytes; copy or export it again"
        )
    if size > expected:  # mrcfile's permissive mode would silently read the first nx*ny*nz values
        raise CryopickError(
            f"{path}: the MRC header announces {nx} x {ny} x {nz} {MRC_MODES[mode]} ({expected} bytes with the "
            f"{nsymbt}-byte extended header) but the file has {size - expected} bytes more; the header does not "
            "describe the data (corrupt header or wrong size written): export the image again"
        )
    if bytes(header.map) != b"MAP ":
        warnings.warn(f"{path}: MRC header without the 'MAP ' identifier (old MRC variant); reading it anyway",
                      stacklevel=4)
    return header


def _imod_unsigned_bytes(path: Path, header) -> bool:
    """IMOD writes mode-0 data as unsigned bytes unless its header flags say signed."""
    with open(path, "rb") as fh:
        fh.seek(152)
        raw = fh.read(8)
    stamp, flags = np.frombuffer(raw, dtype=header.nx.dtype, count=2)
    return int(stamp) == _IMOD_STAMP and not (int(flags) & 1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _read_mrc(path: Path, mmap: bool) -> Image:
    import mrcfile

    header = _check_mrc_header(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opener = mrcfile.mmap if mmap else mrcfile.open
        mrc = opener(path, mode="r", permissive=True)
    data = mrc.data
    if data is None:
        raise CryopickError(f"{path}: MRC header present but no data; the file is truncated")
    if int(header.mode) == 0 and _imod_unsigned_bytes(path, header):
        data = data.view(np.uint8)
    pixel_size = None
    voxel = float(mrc.voxel_size.x)
    if np.isfinite(voxel) and voxel > 0:
        pixel_size = voxel
        vy = float(mrc.voxel_size.y)
        if np.isfinite(vy) and vy > 0 and abs(vy - voxel) > 1e-3 * voxel:
            warnings.warn(f"{path}: anisotropic pixel size {voxel:g} x {vy:g} Å in the header; using {voxel:g}",
                          stacklevel=3)
    if pixel_size is None:
        _warn_missing_pixel_size(path)
    return Image(data=data, pixel_size=pixel_size, path=path)


def _read_tiff(path: Path) -> Image:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        pixel_size = _tiff_pixel_size(tif)
    if data.ndim == 3 and data.shape[-1] in (3, 4) and data.shape[0] > 4:
        data = data[..., :3].mean(axis=-1)
    if pixel_size is None:
        _warn_missing_pixel_size(path)
    return Image(data=np.asarray(data), pixel_size=pixel_size, path=path)


def _tiff_pixel_size(tif) -> float | None:
    """Pixel size in Å from the TIFF resolution tags, when they use centimetres or an ImageJ unit."""
    try:
        page = tif.pages[0]
        tags = page.tags
        if "XResolution" not in tags:
            return None
        num, den = tags["XResolution"].value
        if num == 0:
            return None
        per_unit = den / num  # size of one pixel in the resolution unit
        unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
        unit = int(unit)
        if unit == 3:  # centimetre
            return per_unit * 1e8
        if tif.imagej_metadata and tif.imagej_metadata.get("unit") in ("A", "Å", "angstrom"):
            return per_unit
        if tif.imagej_metadata and tif.imagej_metadata.get("unit") in ("nm", "nanometer"):
            return per_unit * 10
    except Exception:
        return None
    return None


def _read_raster(path: Path) -> Image:
    from PIL import Image as PILImage

    if path.suffix.lower() == ".png":
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - 12))
            if b"IEND" not in fh.read():
                raise CryopickError(f"{path}: truncated PNG (no IEND chunk at the end); copy or export it again")
    with PILImage.open(path) as im:
        if im.mode in ("RGB", "RGBA", "P", "LA", "CMYK"):
            im = im.convert("L")
        data = np.asarray(im)
    _warn_missing_pixel_size(path)
    return Image(data=data, pixel_size=None, path=path)


_UNIT_TO_ANGSTROM = {"angstrom": 1.0, "nanometer": 10.0, "micrometer": 1e4, "millimeter": 1e7, None: 1.0}


def _read_ome_zarr(path: Path) -> Image:
    """OME-NGFF 0.4 (``multiscales`` in the group attributes) or 0.5 (under ``ome``); level 0 is read
    lazily. The pixel size is the x scale (dataset scale × multiscale scale) converted to Å."""
    import zarr

    try:
        group = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise CryopickError(f"{path}: not a Zarr store ({_first_line(exc)})") from exc
    if isinstance(group, zarr.Array):
        _warn_missing_pixel_size(path)
        return Image(data=group, pixel_size=None, path=path)
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise CryopickError(f"{path}: Zarr group without OME 'multiscales' metadata; is it an OME-Zarr image?")
    ms = multiscales[0]
    dataset = ms["datasets"][0]
    if dataset["path"] not in group:
        raise CryopickError(f"{path}: OME-Zarr level {dataset['path']!r} is missing; the store is incomplete")
    data = group[dataset["path"]]
    axes = [a if isinstance(a, dict) else {"name": a} for a in ms.get("axes", [])]
    names = [a.get("name") for a in axes]
    x_axis = names.index("x") if "x" in names else data.ndim - 1
    unit = axes[x_axis].get("unit") if axes else None
    scale = None
    for transforms in (dataset.get("coordinateTransformations", []), ms.get("coordinateTransformations", [])):
        for transform in transforms or []:
            if transform.get("type") == "scale":
                scale = (scale or 1.0) * float(transform["scale"][x_axis])
    pixel_size = None
    if scale is not None and scale > 0:
        if unit not in _UNIT_TO_ANGSTROM:
            warnings.warn(f"{path}: unknown OME-Zarr unit {unit!r}; pixel size left unknown", stacklevel=3)
        else:
            pixel_size = scale * _UNIT_TO_ANGSTROM[unit]
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    if pixel_size is None:
        _warn_missing_pixel_size(path)
    return Image(data=data, pixel_size=pixel_size, path=path)


def write_mrc(path: str | os.PathLike, data: np.ndarray, pixel_size: float | None = None) -> None:
    """Write ``data`` as MRC (float32 unless integer/float16 given), atomically."""
    import mrcfile

    data = np.asarray(data)
    if data.dtype not in (np.int8, np.int16, np.uint8, np.uint16, np.float16, np.float32):
        data = data.astype(np.float32)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)
            if pixel_size is not None:
                mrc.voxel_size = pixel_size


def write_ome_zarr(path: str | os.PathLike, data: np.ndarray, pixel_size: float | None = None,
                   chunks: tuple[int, ...] = (64, 64, 64)) -> None:
    """Write a single-scale OME-Zarr (v0.4 layout) volume with axes z, y, x in Å."""
    import shutil
    import tempfile

    import zarr

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # the temporary store must be on the same file system
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        group = zarr.open_group(str(tmp), mode="w")
        group.create_dataset("0", data=np.asarray(data), chunks=chunks[: np.ndim(data)])
        scale = [pixel_size or 1.0] * np.ndim(data)
        group.attrs["multiscales"] = [
            {
                "version": "0.4",
                "axes": [{"name": a, "type": "space", "unit": "angstrom"} for a in "zyx"[-np.ndim(data):]],
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
            }
        ]
        if path.exists():
            shutil.rmtree(path)
        publish(tmp, path)  # mkdtemp's private 0o700 -> the umask's mode
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a 2D array as an 8-bit PNG, contrast-stretched to its 0.5–99.5 percentiles."""
    from PIL import Image as PILImage

    lo, hi = np.percentile(image, [0.5, 99.5])
    scaled = np.clip((np.asarray(image, np.float32) - lo) / max(hi - lo, 1e-12), 0, 1)
    with atomic_path(path) as tmp:
        PILImage.fromarray((scaled * 255).astype(np.uint8)).save(tmp, format="PNG")

