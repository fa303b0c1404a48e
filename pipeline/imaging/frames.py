"""Movies read in blocks of frames, so that a step never needs the whole movie in memory.

A :class:`FrameSource` is a ``(frames, height, width)`` float32 movie that can be read
front to back as many times as a step needs, one block of frames at a time; the block's size
is a memory setting (``block_bytes``), not a parameter of any result. The motion correction
and the PMD denoiser take a source where they took an array and give identical results:

- :class:`ArraySource`: a movie already in memory (or a memory map);
- :class:`FileSource`: one channel and field of a scan file (TIFF or HDF5), optionally moved
  by per-frame motion shifts as it is read.

``numpy.asarray(source)`` reads the whole movie, for steps that cannot stream.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

__all__ = ["FrameSource", "ArraySource", "FileSource", "as_source", "DEFAULT_BLOCK_BYTES"]

DEFAULT_BLOCK_BYTES = 256 * 2**20  # 256 MiB of frames per block


class FrameSource:
    """A ``(frames, height, width)`` float32 movie read in blocks of whole frames.

    Parameters
    ----------
    shape
        ``(frames, height, width)``.
    block_bytes
        Most bytes of one block of frames (at least one frame per block).
    scratch
        Folder for the temporary files of steps that reorder the movie on disk (PMD's
        tiles); default the system's temporary folder.
    """

    dtype = np.dtype(np.float32)
    ndim = 3

    def __init__(
        self, shape: Sequence[int], *, block_bytes: int = DEFAULT_BLOCK_BYTES, scratch: str | Path | None = None
    ):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f"movie has shape {shape} (expected (frames, height, width))")
        if int(block_bytes) < 1:
            raise ValueError(f"block_bytes = {block_bytes} (expected >= 1)")
        self.shape = shape
        self.block_bytes = int(block_bytes)
        self.scratch = Path(scratch) if scratch else None

    # -- what a subclass provides ------------------------------------------------------------

    def frames(self) -> Iterator[np.ndarray]:
        """Yield every frame, ``(height, width)`` float32, from the first."""
        raise NotImplementedError

    # -- derived -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the whole movie as float32."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def frames_per_block(self) -> int:
        frame_bytes = max(1, self.shape[1] * self.shape[2] * self.dtype.itemsize)
        return max(1, min(self.shape[0], self.block_bytes // frame_bytes))

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first frame, (n, height, width) float32)`` blocks of at most ``frames_per_block`` frames."""
        size = self.frames_per_block
        buffer = np.empty((size, *self.shape[1:]), dtype=np.float32)
        start = n = 0
        for frame in self.frames():
            buffer[n] = frame
            n += 1
            if n == size:
                yield start, buffer
                start, n = start + n, 0
        if n:
            yield start, buffer[:n]
        if start + n != self.shape[0]:
            raise ValueError(f"movie gave {start + n} frames (expected {self.shape[0]})")

    def take(self, indices: Sequence[int]) -> np.ndarray:
        """The frames at ``indices`` (sorted, unique), ``(len(indices), height, width)`` float32, in one pass."""
        indices = [int(i) for i in indices]
        out = np.empty((len(indices), *self.shape[1:]), dtype=np.float32)
        if not indices:
            return out
        wanted = {t: i for i, t in enumerate(indices)}
        last = max(indices)
        for t, frame in enumerate(self.frames()):
            if t in wanted:
                out[wanted[t]] = frame
            if t >= last:
                break
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        for start, block in self.blocks():
            out[start : start + len(block)] = block
        return out if dtype is None else out.astype(dtype, copy=False)

    def scratch_dir(self) -> Path:
        """The folder for temporary files (created if needed)."""
        import tempfile

        folder = self.scratch or Path(tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        return folder


class ArraySource(FrameSource):
    """A movie in memory (or a memory map) as a source."""

    def __init__(self, movie: np.ndarray, **settings):
        if np.ndim(movie) != 3:
            raise ValueError(f"movie has shape {np.shape(movie)} (expected (frames, height, width))")
        super().__init__(np.shape(movie), **settings)
        self.array = movie

    def frames(self) -> Iterator[np.ndarray]:
        for t in range(self.shape[0]):
            yield np.asarray(self.array[t], dtype=np.float32)

    def take(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([np.asarray(self.array[int(i)], dtype=np.float32) for i in indices]).reshape(
            len(indices), *self.shape[1:]
        )


class FileSource(FrameSource):
    """One channel and field of a scan file, each frame moved by ``shifts[t]`` when given.

    Every pass reads the file again (frame by frame, checking values as
    :func:`pipeline.imaging.io.iter_frames` does).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        channel: int = 0,
        field: int = 0,
        axes: str | None = None,
        shifts: np.ndarray | None = None,
        **settings,
    ):
        from pipeline.imaging import io

        info = io.movie_info(path, axes=axes)
        super().__init__((info.nframes, info.height, info.width), **settings)
        if shifts is not None and len(shifts) != info.nframes:
            raise ValueError(f"{path}: {info.nframes} frames but {len(shifts)} shifts (expected one shift per frame)")
        self.path = Path(path)
        self.channel, self.field, self.axes = channel, field, axes
        self.shifts = None if shifts is None else np.asarray(shifts, dtype=np.float32)

    def frames(self) -> Iterator[np.ndarray]:
        from pipeline.imaging import io, motion

        reader = io.iter_frames(self.path, channel=self.channel, field=self.field, axes=self.axes)
        for t, frame in enumerate(reader):
            if self.shifts is None:
                yield np.asarray(frame, dtype=np.float32)
            else:
                yield motion.apply_shift(frame, self.shifts[t])


def as_source(movie) -> FrameSource:
    """``movie`` as a :class:`FrameSource` (an array is wrapped, a source is returned as is)."""
    return movie if isinstance(movie, FrameSource) else ArraySource(movie)


def settings_from_environment() -> dict:
    """``block_bytes`` and ``scratch`` from ``$PIPELINE_BLOCK_MB`` and ``$PIPELINE_SCRATCH``."""
    settings: dict = {}
    block_mb = os.environ.get("PIPELINE_BLOCK_MB")
    if block_mb:
        try:
            value = float(block_mb)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise ValueError(f"PIPELINE_BLOCK_MB={block_mb!r} (expected a positive number of MiB)")
        settings["block_bytes"] = int(value * 2**20)
    if os.environ.get("PIPELINE_SCRATCH"):
        settings["scratch"] = os.environ["PIPELINE_SCRATCH"]
    return settings
