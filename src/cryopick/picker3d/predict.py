"""Sliding-window inference of a promptable 3D segmenter over whole tomograms, in bounded memory.

The tomogram is covered by a grid of cubic windows (``window`` voxels, 64 by default) spaced
``stride`` voxels apart. On each axis the grid is centred on the tomogram and voxels outside it are
filled by reflection (``dcb|abcd|cba``), so every window is full-size and every voxel is covered.
Each window is z-scored on its own, segmented for every prompt, and the per-window probabilities are
blended with separable linear-ramp weights ``w(i) = min(i + 0.5, window - i - 0.5)`` (highest in the
window centre, never zero), normalised by the summed weights: a constant prediction stays that
constant.

Memory: windows are processed one z-row at a time; only a ``window``-deep slab of the input and of
the output accumulator is held, and finished z-planes are written to the output (an in-memory array
or, for large tomograms, a ``.npy`` memory map in ``scratch``). The input may be a memory map.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cryopick.config import check, check_number
from cryopick.models.prompt_encoder import zscore_windows
from cryopick.preprocess import read_block
from cryopick.runtime import cpu_has_native_bf16


@dataclass(frozen=True)
class Segmentation:
    """How tomograms are segmented (:class:`~cryopick.picker3d.pick.TomogramPicker`, ``pick3d``): cubic windows of
    ``window`` voxels every ``stride`` voxels, ``batch_size`` windows per forward pass, ``bf16`` autocast
    (``None``: where it is faster, :func:`resolve_bf16`), on ``device`` (``None``: CPU, or the model's).
    Whether ``window`` suits the network (a multiple of its input multiple), and ``stride <= window``, are
    checked with the model (:func:`check_window`: a window that does not suit is the first thing to say)."""

    stride: int = 32
    window: int = 64
    batch_size: int = 4
    bf16: bool | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        check_number(self, "window", 1, integer=True)
        check_number(self, "stride", 1, integer=True)
        check_number(self, "batch_size", 1, integer=True)
        check(self, "bf16", self.bf16 is None or isinstance(self.bf16, bool), "None, True or False")
        check(self, "device", self.device is None or isinstance(self.device, str), "None or a device name (cpu, cuda:1)")

    def picker_options(self) -> dict:
        """The :class:`~cryopick.picker3d.pick.TomogramPicker` keywords (besides ``device``)."""
        return dict(stride=self.stride, window=self.window, batch_size=self.batch_size, bf16=self.bf16)


def window_starts(length: int, window: int, stride: int) -> np.ndarray:
    """Start indices (may be negative) of windows covering ``[0, length)``, grid centred on the axis."""
    if stride <= 0 or stride > window:
        raise ValueError(f"stride must be in 1..window ({window}), got {stride}")
    n = 1 if length <= window else math.ceil((length - window) / stride) + 1
    span = (n - 1) * stride + window
    return -((span - length) // 2) + stride * np.arange(n)


def ramp(window: int) -> np.ndarray:
    """Linear-ramp blending weights ``(window,)``, maximal at the centre, strictly positive."""
    i = np.arange(window, dtype=np.float64)
    return np.minimum(i + 0.5, window - i - 0.5) / (window / 2)


def weight_sum(length: int, starts: np.ndarray, window: int) -> np.ndarray:
    """Sum over windows of the ramp weights at each voxel of ``[0, length)`` (one axis)."""
    total = np.zeros(length, dtype=np.float64)
    w = ramp(window)
    for s in starts:
        lo, hi = max(0, s), min(length, s + window)
        if hi > lo:
            total[lo:hi] += w[lo - s : hi - s]
    return total


class _Output:
    """Destination of the blended map ``(P, D, H, W)``: a float32 array or a ``.npy`` memory map."""

    def __init__(self, shape: tuple[int, ...], in_memory_limit_gb: float, scratch: str | os.PathLike | None):
        nbytes = 4 * int(np.prod(shape))
        self.path = None
        if nbytes <= in_memory_limit_gb * 2**30:
            self.array = np.zeros(shape, dtype=np.float32)
        else:
            fd, path = tempfile.mkstemp(suffix=".npy", dir=scratch)
            os.close(fd)
            self.path = Path(path)
            self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=shape)


def predict_tomogram(
    model: torch.nn.Module,
    volume,
    embeddings: torch.Tensor,
    *,
    window: int = 64,
    stride: int = 32,
    batch_size: int = 4,
    bf16: bool = True,
    in_memory_limit_gb: float = 2.0,
    scratch: str | os.PathLike | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Per-prompt occupancy probabilities for a whole tomogram.

    Parameters
    ----------
    model
        A promptable segmenter: ``model(x, z)`` with ``x`` ``(B, 1, w, w, w)`` and ``z`` ``(P, 32)``
        returns logits ``(B, P, w, w, w)`` (e.g. ``ProPicker.segmenter``).
    volume
        ``(D, H, W)`` tomogram at the working voxel size (numpy array or memory map), in the
        contrast the model was trained on.
    embeddings
        ``(P, 32)`` prompt embeddings.
    window, stride
        Window edge and spacing in voxels (``stride <= window``; 32 = half overlap).
    batch_size
        Windows per forward pass.
    bf16
        bfloat16 autocast (about 3x faster on CPUs with AVX512-BF16/AMX; probabilities change by
        ~1e-2 at most).
    in_memory_limit_gb
        Output larger than this goes to a memory-mapped ``.npy`` in ``scratch`` (default: system
        temp dir); the caller may delete it after use.
    progress
        Show a tqdm bar over windows.

    Returns
    -------
    np.ndarray
        ``(P, D, H, W)`` float32 probabilities in ``[0, 1]`` (possibly a memory map).
    """
    depth, height, width = (int(s) for s in volume.shape)
    z_emb = torch.as_tensor(embeddings, dtype=torch.float32)
    if z_emb.ndim == 1:
        z_emb = z_emb[None]
    n_prompts = z_emb.shape[0]
    starts = [window_starts(n, window, stride) for n in (depth, height, width)]
    wsum = [weight_sum(n, s, window) for n, s in zip((depth, height, width), starts)]
    ramp_w = ramp(window)
    w3 = torch.as_tensor(
        ramp_w[:, None, None] * ramp_w[None, :, None] * ramp_w[None, None, :], dtype=torch.float32
    )
    out = _Output((n_prompts, depth, height, width), in_memory_limit_gb, scratch)
    norm_yx = (wsum[1][:, None] * wsum[2][None, :]).astype(np.float32)

    param = next(model.parameters())
    device = param.device
    z_emb = z_emb.to(device)
    # Accumulator for the z-range [acc_lo, acc_lo + window) of the current row of windows.
    acc = np.zeros((n_prompts, window, height, width), dtype=np.float32)
    acc_lo = int(starts[0][0])
    done_to = 0  # z-planes [0, done_to) are final and written
    total = len(starts[0]) * len(starts[1]) * len(starts[2])
    bar = tqdm(total=total, desc="segmenting", unit="window", disable=not progress)
    was_training = model.training
    model.eval()
    try:
        for zi, z0 in enumerate(starts[0]):
            z0 = int(z0)
            shift = z0 - acc_lo
            if shift:  # slide the accumulator down to start at z0
                acc[:, : acc.shape[1] - shift] = acc[:, shift:]
                acc[:, acc.shape[1] - shift :] = 0
                acc_lo = z0
            slab_rows = read_block(volume, (z0, int(starts[1][0]), int(starts[2][0])),
                                   (window, int(starts[1][-1]) - int(starts[1][0]) + window,
                                    int(starts[2][-1]) - int(starts[2][0]) + window))
            coords = [(int(y0), int(x0)) for y0 in starts[1] for x0 in starts[2]]
            for b in range(0, len(coords), batch_size):
                chunk = coords[b : b + batch_size]
                oy, ox = int(starts[1][0]), int(starts[2][0])
                x = np.stack([slab_rows[:, y0 - oy : y0 - oy + window, x0 - ox : x0 - ox + window] for y0, x0 in chunk])
                xt = zscore_windows(torch.from_numpy(x)[:, None]).to(device)
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(xt, z_emb)
                prob = (torch.sigmoid(logits.float()) * w3).cpu().numpy()  # (B, P, w, w, w)
                for (y0, x0), p in zip(chunk, prob):
                    ys, ye = max(0, y0), min(height, y0 + window)
                    xs, xe = max(0, x0), min(width, x0 + window)
                    acc[:, :, ys:ye, xs:xe] += p[:, :, ys - y0 : ye - y0, xs - x0 : xe - x0]
                bar.update(len(chunk))
            # Planes below the next row's start receive no more contributions.
            final_to = min(depth, int(starts[0][zi + 1]) if zi + 1 < len(starts[0]) else depth)
            if final_to > done_to:
                src = slice(done_to - acc_lo, final_to - acc_lo)
                norm = wsum[0][done_to:final_to, None, None].astype(np.float32) * norm_yx[None]
                out.array[:, done_to:final_to] = acc[:, src] / norm[None]
                done_to = final_to
    finally:
        bar.close()
        model.train(was_training)
    if out.path is not None:
        out.array.flush()
    return out.array


# -- run-time choices ---------------------------------------------------------------------------------------
def resolve_bf16(bf16: bool | None, device: str | torch.device = "cpu") -> bool:
    """``bf16`` as given, or for ``None`` (``--bf16 auto``): on a GPU when it supports bfloat16, on a CPU
    only with native bf16 arithmetic (AVX512-BF16 or AMX), where it is about 3x faster than float32
    (emulated bf16 is slower; probabilities differ by ~1e-2 at most)."""
    if bf16 is not None:
        return bool(bf16)
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    return cpu_has_native_bf16()


def set_threads(threads: int | None) -> int:
    """Set PyTorch's CPU threads for a 3D run: ``threads``, or with ``None`` one per core that other
    processes leave free now (the shared policy of :func:`cryopick.runtime.configure_threads`, the same
    for 2D and 3D; the choice is logged). Returns the number set."""
    from cryopick.runtime import configure_threads

    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return configure_threads(threads)


def check_window(model: torch.nn.Module, window: int, stride: int | None = None) -> None:
    """Raise a :class:`CryopickError` unless ``window`` suits the segmenter (a positive multiple of its
    input multiple, e.g. 16) and ``1 <= stride <= window``."""
    from cryopick.errors import CryopickError

    segmenter = getattr(model, "segmenter", model)
    m = int(getattr(segmenter, "input_multiple", 1))
    if not isinstance(window, int) or window < m or window % m:
        raise CryopickError(f"window {window!r}: must be a multiple of {m} voxels (e.g. {4 * m}) for this network")
    if stride is not None and (not isinstance(stride, int) or not 1 <= stride <= window):
        raise CryopickError(f"stride {stride!r}: must be between 1 and the window ({window}) voxels")
