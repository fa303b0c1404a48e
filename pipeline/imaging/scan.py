"""Whole-scan steps over movie files: validate a scan while reading its header, load it.

To read a scan a block of frames at a time (motion-corrected or not), see
:class:`pipeline.imaging.frames.FileSource`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.imaging import io


def scan_info(path: str | Path, *, channel: int = 0, field: int = 0, axes: str | None = None) -> io.MovieInfo:
    """The header of a movie file, after reading every frame once (streamed).

    A file that cannot be read to its end (truncated, corrupt), holds no frames or holds
    non-finite values raises :class:`pipeline.imaging.io.MovieFileError`, so that a scan is
    rejected at ingest rather than half-way through processing.
    """
    info = io.movie_info(path, axes=axes)
    count = 0
    for _ in io.iter_frames(path, channel=channel, field=field, axes=axes):
        count += 1
    if count == 0:
        raise io.MovieFileError(f"{path}: 0 frames (expected at least 1)")
    info.nframes = count
    return info


def read_scan(path: str | Path, *, channel: int = 0, field: int = 0, axes: str | None = None) -> np.ndarray:
    """One channel and field of a scan, (frames, height, width) float32."""
    return io.read_movie(path, channel=channel, field=field, axes=axes)
