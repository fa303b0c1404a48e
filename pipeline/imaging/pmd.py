"""Penalized-matrix-decomposition style denoising and compression of a movie (Buchanan et al.).

The field of view is covered by overlapping spatial blocks of equal size. In each block the
movie is centred and divided by each pixel's noise level (estimated from the high-frequency
part of its power spectrum), so that noise is white with unit variance; its leading rank-1
components (eigenvectors of the block's pixel covariance, spatial ``u`` and temporal
``v = u' Y``) are kept while they are smoother than pure noise: a component passes when its
spatial roughness (total variation over L1 norm) or temporal roughness (first-difference L1
over L1 norm) is below the smallest value seen in the leading components of simulated noise
blocks of the same size; decomposition of the block stops after ``max_fails`` consecutive
rejections. The denoised movie is the blocks' low-rank reconstructions recombined with
separable linear-ramp weights over the overlaps.

Runs in torch (on the GPU when one is visible), block by block: only one spatial block of the
movie (all its frames) is held in working memory beside the factors. An array is read block
by block in place; a :class:`~pipeline.imaging.frames.FrameSource` (a scan file read as it is
motion-corrected) is streamed once, a block of frames at a time, into a temporary file of
tiles (each spatial block's pixels contiguous over time) from which the blocks are read back:
peak memory is one block of frames or twice one spatial block, plus the factors, whatever the
movie's length, and the factors are bit-identical to those of the same movie in memory.
Deterministic for a given ``seed``.
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from pipeline.device import choose_device
from pipeline.imaging.frames import ArraySource, FrameSource

__all__ = ["PMDResult", "denoise", "noise_level", "block_grid"]


def noise_level(traces: torch.Tensor, band: tuple[float, float] = (0.25, 0.5)) -> torch.Tensor:
    """Noise standard deviation of each row from its power spectrum's high-frequency band.

    Parameters
    ----------
    traces
        (n, frames) tensor, each row centred.
    band
        Frequency band in cycles per frame (0.5 is Nyquist) where the signal is negligible.

    Returns
    -------
    torch.Tensor
        (n,) noise standard deviation (same unit as ``traces``); for white noise of variance
        s2 the periodogram's expectation is s2 at every frequency.
    """
    n_t = traces.shape[-1]
    freqs = torch.fft.rfftfreq(n_t, device=traces.device)
    sel = (freqs >= band[0]) & (freqs <= band[1])
    if n_t < 4 or not bool(sel.any()):
        return traces.std(dim=-1)
    # rows a few at a time: the spectrum of ~2M frequencies at most, whatever the length
    rows = max(1, 2**21 // freqs.numel())
    flat = traces.reshape(-1, n_t)
    out = torch.empty(flat.shape[0], dtype=traces.dtype, device=traces.device)
    for start in range(0, flat.shape[0], rows):
        spectrum = torch.fft.rfft(flat[start : start + rows], dim=-1)[:, sel]
        out[start : start + rows] = (spectrum.abs() ** 2 / n_t).mean(dim=-1).sqrt()
    return out.reshape(traces.shape[:-1])


def block_grid(size: int, block: int, overlap: int) -> list[int]:
    """Start positions of equal blocks of ``block`` pixels covering ``size`` with >= ``overlap``."""
    if block >= size:
        return [0]
    n = math.ceil((size - overlap) / (block - overlap))
    return [int(round(s)) for s in np.linspace(0, size - block, n)]


def _ramp_weights(size: int, starts: list[int], block: int) -> np.ndarray:
    """(n_blocks, block) weights along one axis that sum to 1 at every position."""
    raw = np.zeros((len(starts), size))
    for i, s in enumerate(starts):
        b = min(block, size)
        pos = np.arange(b)
        # highest in the middle of the block, falling linearly to near 0 at its edges
        raw[i, s : s + b] = np.minimum(pos + 1, b - pos)
    raw /= raw.sum(0, keepdims=True)
    return np.stack([raw[i, s : s + min(block, size)] for i, s in enumerate(starts)])


def _spatial_roughness(u: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """(k,) total variation / L1 norm of each column of ``u`` (P, k) as a (bh, bw) image."""
    img = u.T.reshape(-1, bh, bw)
    tv = torch.zeros(img.shape[0], dtype=u.dtype, device=u.device)
    count = 0
    if bh > 1:
        tv = tv + (img[:, 1:, :] - img[:, :-1, :]).abs().mean(dim=(1, 2))
        count += 1
    if bw > 1:
        tv = tv + (img[:, :, 1:] - img[:, :, :-1]).abs().mean(dim=(1, 2))
        count += 1
    return tv / max(count, 1) / img.abs().mean(dim=(1, 2)).clamp_min(1e-12)


def _temporal_roughness(v: torch.Tensor) -> torch.Tensor:
    """(k,) mean |first difference| / mean |deviation from the median| of each row of ``v``."""
    if v.shape[1] < 3:
        return torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    dev = (v - v.median(dim=1, keepdim=True).values).abs().mean(dim=1).clamp_min(1e-12)
    return (v[:, 1:] - v[:, :-1]).abs().mean(dim=1) / dev


def _leading_components(
    y: torch.Tensor, k: int, generator: torch.Generator | None = None, n_iter: int = 6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading ``k`` left singular vectors (P, k) and their projections (k, T) of ``y`` (P, T).

    Subspace iteration on the pixel covariance ``y y'`` from a seeded random start, then a
    Rayleigh-Ritz step: a full eigendecomposition of the (P, P) covariance costs ~10x more
    and is not needed for the few leading components.
    """
    p = y.shape[0]
    gram = (y @ y.T).double()
    q = min(p, k + 10)
    if q >= p:
        evals, evecs = torch.linalg.eigh(gram)
        u = evecs[:, -k:].flip(1).to(y.dtype)
    else:
        # float64 for the small iterations: cheap, and float32 QR is slow on some CPU builds
        gen = generator or torch.Generator(device="cpu").manual_seed(0)
        basis = torch.randn(p, q, generator=gen, dtype=torch.float64).to(y.device)
        for _ in range(n_iter):
            basis, _ = torch.linalg.qr(gram @ basis)
        small = basis.T @ gram @ basis
        evals, evecs = torch.linalg.eigh(small)
        u = (basis @ evecs[:, -k:].flip(1)).to(y.dtype)
    # a fixed sign: the largest-magnitude entry of each spatial component is positive
    idx = u.abs().argmax(dim=0)
    sign = torch.sign(u[idx, torch.arange(u.shape[1], device=u.device)])
    sign[sign == 0] = 1
    u = u * sign
    return u, u.T @ y


@lru_cache(maxsize=16)
def _noise_thresholds(
    bh: int, bw: int, n_t: int, seed: int, n_sims: int, n_components: int, device: str
) -> tuple[float, float]:
    """Smallest spatial and temporal roughness among the leading components of white noise."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 7919)
    spatial, temporal = [], []
    for _ in range(n_sims):
        y = torch.randn(bh * bw, n_t, generator=gen, dtype=torch.float32).to(device)
        u, v = _leading_components(y, min(n_components, bh * bw), gen)
        spatial.append(_spatial_roughness(u, bh, bw))
        temporal.append(_temporal_roughness(v))
    return float(torch.cat(spatial).min()), float(torch.cat(temporal).min())


@dataclass
class PMDResult:
    """A denoised movie as low-rank factors per spatial block.

    Attributes
    ----------
    shape : (frames, height, width)
    blocks : (n_blocks, 5) int64
        ``y0, y1, x0, x1, rank`` of every block.
    spatial : (sum over blocks of pixels * rank,) float32
        Every block's spatial components (pixels, rank), flattened and concatenated.
    temporal : (rank, frames) float32
        Every block's temporal components, stacked in block order.
    mean, noise : (height, width) float32
        Per-pixel mean and noise standard deviation (the movie's unit).
    raw_nbytes : int
        Bytes of the movie that was decomposed.
    snr_gain_estimate : float
        Noise of the raw movie / noise of the denoised movie, both from the high-frequency
        power spectrum (no ground truth needed).
    """

    shape: tuple[int, int, int]
    blocks: np.ndarray
    spatial: np.ndarray
    temporal: np.ndarray
    mean: np.ndarray
    noise: np.ndarray
    raw_nbytes: int
    snr_gain_estimate: float = float("nan")
    params: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        """Total number of components over all blocks."""
        return int(self.blocks[:, 4].sum())

    @property
    def stored_nbytes(self) -> int:
        return int(
            self.spatial.nbytes + self.temporal.nbytes + self.mean.nbytes + self.noise.nbytes + self.blocks.nbytes
        )

    @property
    def compression_ratio(self) -> float:
        """Bytes of the raw movie / bytes of the stored factors."""
        return self.raw_nbytes / self.stored_nbytes

    def block_factors(self):
        """Yield ``(y0, y1, x0, x1, u (pixels, rank), v (rank, frames))`` for every block."""
        s_off = t_off = 0
        for y0, y1, x0, x1, k in self.blocks.tolist():
            p = (y1 - y0) * (x1 - x0)
            u = self.spatial[s_off : s_off + p * k].reshape(p, k)
            v = self.temporal[t_off : t_off + k]
            s_off += p * k
            t_off += k
            yield y0, y1, x0, x1, u, v

    def _weights(self) -> dict[tuple[int, int], np.ndarray]:
        _, h, w = self.shape
        ys = sorted({int(b[0]) for b in self.blocks})
        xs = sorted({int(b[2]) for b in self.blocks})
        bh = int(self.blocks[0, 1] - self.blocks[0, 0])
        bw = int(self.blocks[0, 3] - self.blocks[0, 2])
        wy, wx = _ramp_weights(h, ys, bh), _ramp_weights(w, xs, bw)
        return {(y, x): np.outer(wy[i], wx[j]).astype(np.float32) for i, y in enumerate(ys) for j, x in enumerate(xs)}

    def reconstruct(self, frames: slice | None = None) -> np.ndarray:
        """The denoised movie (or ``frames`` of it), (frames, height, width) float32."""
        t_all, h, w = self.shape
        frames = frames or slice(0, t_all)
        n_t = len(range(*frames.indices(t_all)))
        out = np.zeros((n_t, h, w), dtype=np.float32)
        weights = self._weights()
        for y0, y1, x0, x1, u, v in self.block_factors():
            if u.shape[1] == 0:
                continue
            wgt = weights[(y0, x0)] * self.noise[y0:y1, x0:x1]
            block = (v[:, frames].T @ u.T).reshape(n_t, y1 - y0, x1 - x0)
            out[:, y0:y1, x0:x1] += block * wgt[None]
        out += self.mean[None]
        return out

    def frames(self, **settings) -> FrameSource:
        """The denoised movie as a ``FrameSource``, reconstructed a block of frames at a time.

        ``settings``: ``block_bytes`` and ``scratch`` of :class:`~pipeline.imaging.frames.FrameSource`.
        """
        return _Reconstructed(self, **settings)

    def project(self, weights: np.ndarray) -> np.ndarray:
        """``weights`` (n, height, width) applied to the denoised movie: (n, frames) float32.

        Computed from the factors, without reconstructing the movie: each cell's trace is
        its weighted sum over pixels of ``mean + noise * sum_blocks(w u v)``.
        """
        weights = np.asarray(weights, dtype=np.float32)
        if weights.ndim != 3 or weights.shape[1:] != tuple(self.shape[1:]):
            raise ValueError(f"weights have shape {weights.shape} (expected (cells, {self.shape[1]}, {self.shape[2]}))")
        n = weights.shape[0]
        if n == 0:  # no cells: no traces (reshape(0, -1) below cannot infer a size)
            return np.zeros((0, self.shape[0]), dtype=np.float32)
        out = np.repeat((weights * self.mean[None]).sum(axis=(1, 2))[:, None], self.shape[0], axis=1)
        blend = self._weights()
        for y0, y1, x0, x1, u, v in self.block_factors():
            if u.shape[1] == 0:
                continue
            local = weights[:, y0:y1, x0:x1] * (blend[(y0, x0)] * self.noise[y0:y1, x0:x1])[None]
            local = local.reshape(n, -1)
            if not local.any():
                continue
            out += (local @ u) @ v
        return out.astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The factors as plain arrays (for storage); inverse of :meth:`from_arrays`."""
        return {
            "blocks": self.blocks.astype(np.int64),
            "spatial": self.spatial,
            "temporal": self.temporal,
            "mean": self.mean,
            "noise": self.noise,
            "info": np.array([*self.shape, self.raw_nbytes], dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], snr_gain_estimate: float = float("nan")) -> "PMDResult":
        info = np.asarray(arrays["info"]).tolist()
        return cls(
            shape=tuple(int(x) for x in info[:3]),
            blocks=np.asarray(arrays["blocks"], dtype=np.int64),
            spatial=np.asarray(arrays["spatial"], dtype=np.float32),
            temporal=np.asarray(arrays["temporal"], dtype=np.float32),
            mean=np.asarray(arrays["mean"], dtype=np.float32),
            noise=np.asarray(arrays["noise"], dtype=np.float32),
            raw_nbytes=int(info[3]),
            snr_gain_estimate=snr_gain_estimate,
        )


class _Reconstructed(FrameSource):
    """A denoised movie read from its factors, one block of frames at a time."""

    def __init__(self, result: PMDResult, **settings):
        super().__init__(result.shape, **settings)
        self.result = result

    def blocks(self):
        size = self.frames_per_block
        for start in range(0, self.shape[0], size):
            yield start, self.result.reconstruct(slice(start, min(start + size, self.shape[0])))

    def frames(self):
        for _start, block in self.blocks():
            yield from block


def _float32_block(movie: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """One block of the movie as float32, or a ValueError for values float32 cannot hold."""
    raw = np.asarray(movie[:, y0:y1, x0:x1])
    if not np.isfinite(raw).all():
        raise ValueError(f"movie has non-finite values in block y {y0}:{y1}, x {x0}:{x1} (expected finite values)")
    limit = float(np.finfo(np.float32).max)
    if raw.dtype.kind == "f" and raw.dtype.itemsize > 4 and np.abs(raw).max() > limit:
        # float32 would turn them into inf without a word
        raise ValueError(
            f"movie has values up to {float(np.abs(raw).max()):.3g} in block y {y0}:{y1}, x {x0}:{x1} "
            f"(expected |value| <= {limit:.3g}, the float32 range)"
        )
    return raw.astype(np.float32, copy=False)


class _Tiles:
    """A streamed movie's spatial blocks on disk: block ``b`` is a contiguous (frames, pixels) float32 run."""

    def __init__(self, fd: int, path: str, n_blocks: int, n_t: int, pixels: int):
        self.fd, self.path, self.n_t, self.pixels = fd, path, n_t, pixels
        os.ftruncate(fd, n_blocks * n_t * pixels * 4)

    def write(self, b: int, t0: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=np.float32).tobytes()
        os.pwrite(self.fd, data, (b * self.n_t + t0) * self.pixels * 4)

    def read(self, b: int) -> np.ndarray:
        size = self.n_t * self.pixels * 4
        out = np.empty((self.n_t, self.pixels), dtype=np.float32)
        view, done = memoryview(out).cast("B"), 0
        while done < size:
            got = os.preadv(self.fd, [view[done:]], b * size + done)
            if got <= 0:
                raise OSError(f"{self.path}: short read of block {b} ({done} of {size} bytes)")
            done += got
        return out


@contextmanager
def _tiled(source: FrameSource, origins: list[tuple[int, int]], bh: int, bw: int):
    """Stream ``source`` once into a temporary tile file; yield a :class:`_Tiles`; remove the file."""
    handle, path = tempfile.mkstemp(prefix="pmd-", suffix=".tiles", dir=source.scratch_dir())
    try:
        tiles = _Tiles(handle, path, len(origins), source.shape[0], bh * bw)
        for t0, chunk in source.blocks():
            if not np.isfinite(chunk).all():
                bad = t0 + int(np.flatnonzero(~np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1))[0])
                raise ValueError(f"movie has non-finite values in frame {bad} (expected finite values)")
            for b, (y0, x0) in enumerate(origins):
                tiles.write(b, t0, chunk[:, y0 : y0 + bh, x0 : x0 + bw].reshape(len(chunk), -1))
        yield tiles
    finally:
        os.close(handle)
        os.unlink(path)


def denoise(
    movie: np.ndarray | FrameSource,
    *,
    seed: int = 0,
    block_size: int = 32,
    overlap: int = 8,
    max_rank: int = 30,
    max_fails: int = 3,
    require: str = "both",
    noise_sims: int = 3,
    noise_band: tuple[float, float] = (0.25, 0.5),
    device: str | None = None,
) -> PMDResult:
    """Denoise and compress a movie by blockwise low-rank decomposition.

    Parameters
    ----------
    movie
        (frames, height, width) array of any real dtype (a memory map is read block by block),
        or a :class:`~pipeline.imaging.frames.FrameSource` (streamed; see the module's notes).
    seed
        Seed of the simulated noise blocks that set the rejection thresholds.
    block_size
        Side of the square spatial blocks (pixels).
    overlap
        Least overlap of neighbouring blocks (pixels).
    max_rank
        Most components per block.
    max_fails
        Stop decomposing a block after this many consecutive rejected components.
    require
        ``"either"``: a component is kept when it is smoother than noise in space or in
        time; ``"both"``: only when it is smoother in both.
    noise_sims
        Simulated white-noise blocks per block shape for the thresholds.
    noise_band
        Frequency band (cycles per frame) of the noise estimate.
    device
        Torch device; default CUDA when available, else CPU.

    Returns
    -------
    PMDResult
        ``.reconstruct()``, ``.rank``, ``.compression_ratio``, ``.snr_gain_estimate``.

    Raises
    ------
    ValueError
        A movie that is not 3-D, is not real-valued, has fewer than 2 frames, or holds
        non-finite values or values beyond the float32 range.
    """
    if isinstance(movie, ArraySource):
        movie = movie.array
    if movie.ndim != 3:
        raise ValueError(f"movie has shape {movie.shape} (expected (frames, height, width))")
    if np.dtype(movie.dtype).kind not in "uif":
        raise ValueError(f"movie has dtype {movie.dtype} (expected real values; complex parts would be dropped)")
    n_t, h, w = movie.shape
    if n_t < 2 or h < 1 or w < 1:
        raise ValueError(f"movie has shape {movie.shape} (expected at least 2 frames and 1x1 pixels)")
    if require not in ("either", "both"):
        raise ValueError(f"require={require!r} (expected 'either' or 'both')")
    dev = choose_device(device)
    ys = block_grid(h, block_size, overlap)
    xs = block_grid(w, block_size, overlap)
    bh, bw = min(block_size, h), min(block_size, w)
    k_max = min(max_rank, bh * bw, n_t)
    thr_s, thr_t = _noise_thresholds(bh, bw, min(n_t, 1000), seed, noise_sims, min(5, k_max), str(dev))

    mean_img = np.zeros((h, w), dtype=np.float32)
    noise_img = np.zeros((h, w), dtype=np.float32)
    blocks, spatial, temporal = [], [], []
    den_power = np.zeros((h, w), dtype=np.float64)
    weight_y, weight_x = _ramp_weights(h, ys, bh), _ramp_weights(w, xs, bw)
    freqs = torch.fft.rfftfreq(n_t, device=dev)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    band = (freqs >= noise_band[0]) & (freqs <= noise_band[1])
    grid = [(iy, ix, y0, x0) for iy, y0 in enumerate(ys) for ix, x0 in enumerate(xs)]
    origins = [(y0, x0) for _iy, _ix, y0, x0 in grid]
    # a source is streamed once into tiles; an array's blocks are read in place
    with _tiled(movie, origins, bh, bw) if isinstance(movie, FrameSource) else nullcontext() as tiles:
        for b, (iy, ix, y0, x0) in enumerate(grid):
            y1, x1 = y0 + bh, x0 + bw
            if tiles is None:
                block = _float32_block(movie, y0, y1, x0, x1).reshape(n_t, -1)
            else:
                block = tiles.read(b)
            y = torch.from_numpy(np.ascontiguousarray(block.T)).to(dev)  # (P, T)
            del block
            mu = y.mean(dim=1, keepdim=True)
            y.sub_(mu)  # in place: one copy of the block at a time
            sd = noise_level(y, noise_band)
            sd = torch.where(sd > 0, sd, torch.ones_like(sd))
            y.div_(sd[:, None])
            mean_img[y0:y1, x0:x1] = mu.squeeze(1).reshape(bh, bw).cpu().numpy()
            noise_img[y0:y1, x0:x1] = sd.reshape(bh, bw).cpu().numpy()

            u, v = _leading_components(y, k_max, gen)
            smooth_s = _spatial_roughness(u, bh, bw) < thr_s
            smooth_t = _temporal_roughness(v) < thr_t
            passed = (smooth_s | smooth_t) if require == "either" else (smooth_s & smooth_t)
            keep, fails = [], 0
            for j, ok in enumerate(passed.tolist()):
                if ok:
                    keep.append(j)
                    fails = 0
                else:
                    fails += 1
                    if fails >= max_fails:
                        break
            k = len(keep)
            u_k, v_k = u[:, keep], v[keep]
            blocks.append((y0, y1, x0, x1, k))
            spatial.append(u_k.reshape(-1).cpu().numpy().astype(np.float32))
            temporal.append(v_k.cpu().numpy().astype(np.float32))
            if k:  # high-frequency power of the denoised block, for the SNR estimate
                spec = torch.fft.rfft(v_k, dim=1)[:, band]
                pix = (u_k.to(spec.dtype) @ spec).abs().pow(2).mean(dim=1) / n_t * sd.pow(2)
                wgt = np.outer(weight_y[iy], weight_x[ix]).reshape(-1)
                den_power[y0:y1, x0:x1] += (wgt * pix.cpu().numpy()).reshape(bh, bw)
            del y, u, v

    raw_noise = float(np.mean(noise_img.astype(np.float64) ** 2))
    den_noise = float(np.mean(den_power))
    gain = math.sqrt(raw_noise / den_noise) if den_noise > 0 else float("inf")
    return PMDResult(
        shape=(n_t, h, w),
        blocks=np.asarray(blocks, dtype=np.int64).reshape(-1, 5),
        spatial=np.concatenate(spatial) if spatial else np.zeros(0, np.float32),
        temporal=np.concatenate(temporal, axis=0) if temporal else np.zeros((0, n_t), np.float32),
        mean=mean_img,
        noise=noise_img,
        raw_nbytes=int(movie.nbytes),
        snr_gain_estimate=gain,
        params={
            "seed": seed,
            "block_size": block_size,
            "overlap": overlap,
            "max_rank": max_rank,
            "max_fails": max_fails,
            "require": require,
            "thresholds": (thr_s, thr_t),
        },
    )
