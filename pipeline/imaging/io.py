"""Readers of raw two-photon movies: ScanImage TIFF (3.x, 5, 2016+), plain multipage TIFF, HDF5.

A reader opens a file, parses its header into a :class:`MovieInfo` and yields frames one at a
time (``iter_frames``), so that a whole scan is never loaded unless the caller asks for it
(``read_movie``). Every problem with a file (missing, not a TIFF, truncated, no frames,
non-finite values, values beyond float32, complex pixels) is a :class:`MovieFileError` whose
message names the file and what was expected. Truncation is found from the file itself (the
page count a header declares, the page chain and the pixel data against the file's size), not
from tifffile's log, which is where tifffile reports a page chain that runs past the end.
"""

from __future__ import annotations

import ast
import math
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np


class MovieFileError(ValueError):
    """A movie file that cannot be read as a two-photon movie."""


@dataclass
class MovieInfo:
    """What the header of a movie file says.

    Attributes
    ----------
    nframes, height, width : int
        Frames per channel and field, and the frame size in pixels.
    nchannels, nfields : int
        Interleaved channels and fields (planes) per time point.
    fps : float or None
        Volume (time point) rate in Hz; None when the file does not say.
    um_per_pixel : float or None
        Pixel size in micrometres; None when the file does not say.
    software : str
        ``"ScanImage 3.8"``, ``"ScanImage 2016b"``, ``"tiff"``, ``"hdf5"``.
    """

    nframes: int
    height: int
    width: int
    nchannels: int = 1
    nfields: int = 1
    fps: float | None = None
    um_per_pixel: float | None = None
    software: str = "tiff"
    dtype: str = "uint16"
    header: dict = field(default_factory=dict, repr=False)


# ---------------------------------------------------------------------------------------------
# header parsing
# ---------------------------------------------------------------------------------------------


def _value(text: str):
    text = text.strip().rstrip(";")
    if text.startswith("'") and text.endswith("'"):
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        if not inner:
            return []
        rows = [r for r in inner.split(";") if r.strip()]
        try:
            parsed = [[float(v) for v in re.split(r"[\s,]+", r.strip()) if v] for r in rows]
        except ValueError:
            return text
        return parsed[0] if len(parsed) == 1 else parsed
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_key_values(text: str, prefix: str = "") -> dict:
    """``key = value`` lines (ScanImage headers) as a dict of Python values.

    Parameters
    ----------
    text
        Header text; lines separated by ``\\n`` or ``\\r``.
    prefix
        Only lines starting with it are kept (e.g. ``"state."``, ``"SI."``).
    """
    out = {}
    for line in re.split(r"[\r\n]+", text or ""):
        if "=" not in line or not line.startswith(prefix):
            continue
        name, _, value = line.partition("=")
        out[name.strip()] = _value(value)
    return out


def _scanimage_info(tif, page) -> dict | None:
    """Channels, fields, fps, pixel size and version from a ScanImage header, or None."""
    description = page.description or ""
    software = getattr(page, "software", "") or ""
    if description.startswith("state."):  # ScanImage 3.x
        h = parse_key_values(description, "state.")
        nchannels = int(h.get("state.acq.numberOfChannelsSave", 1))
        nfields = int(h.get("state.acq.numberOfZSlices", 1))
        version = h.get("state.software.version", "3")
        fps = h.get("state.acq.frameRate")
        frames = h.get("state.acq.numberOfFrames")
        return {
            "expected_frames": int(frames) if isinstance(frames, (int, float)) and frames > 0 else None,
            "nchannels": max(nchannels, 1),
            "nfields": max(nfields, 1),
            # 3.x acquires one plane after the other: the volume rate is the frame rate / planes
            "fps": float(fps) / max(nfields, 1) if fps else None,
            "um_per_pixel": None,
            "software": f"ScanImage {version}",
            "header": h,
        }
    frame_data = {}
    try:
        import tifffile

        with open(tif.filehandle.path, "rb") as fh:
            frame_data = dict(tifffile.read_scanimage_metadata(fh)[0])
    except Exception:  # no ScanImage 2016+ binary header: fall back to the per-page text
        frame_data = {}
    if not frame_data and software.startswith("SI."):
        frame_data = parse_key_values(software, "SI.")
    if not frame_data and "scanimage.SI" in description:  # ScanImage 5
        frame_data = {k.replace("scanimage.", ""): v for k, v in parse_key_values(description, "scanimage.SI").items()}
        frame_data = {k.replace("SI5.", "SI."): v for k, v in frame_data.items()}
    if not frame_data:
        return None
    save = frame_data.get("SI.hChannels.channelSave", 1)
    nchannels = len(save) if isinstance(save, (list, tuple)) else 1
    enabled = frame_data.get("SI.hStackManager.enable", frame_data.get("SI.hFastZ.enable", False))
    nfields = int(frame_data.get("SI.hStackManager.numSlices", 1)) if enabled else 1
    rate = frame_data.get("SI.hRoiManager.scanVolumeRate") or frame_data.get("SI.hRoiManager.scanFrameRate")
    if rate and not frame_data.get("SI.hRoiManager.scanVolumeRate") and nfields > 1:
        rate = float(rate) / nfields
    um = None
    fov = frame_data.get("SI.hRoiManager.imagingFovUm")
    if isinstance(fov, list) and len(fov) >= 2 and isinstance(fov[0], list):
        xs = [p[0] for p in fov]
        um = (max(xs) - min(xs)) / page.shape[-1]
    version = frame_data.get("SI.VERSION_MAJOR", "5")
    frames = frame_data.get("SI.hStackManager.framesPerSlice")
    per_file = frame_data.get("SI.hScan2D.logFramesPerFile")
    expected = None
    if isinstance(frames, (int, float)) and np.isfinite(frames) and frames > 0:
        # acquisitions split over several files hold only part of the frames in each
        if not (isinstance(per_file, (int, float)) and np.isfinite(per_file) and per_file < frames):
            expected = int(frames)
    return {
        "expected_frames": expected,
        "nchannels": max(nchannels, 1),
        "nfields": max(nfields, 1),
        "fps": float(rate) if rate else None,
        "um_per_pixel": float(um) if um else None,
        "software": f"ScanImage {version}",
        "header": frame_data,
    }


# ---------------------------------------------------------------------------------------------
# TIFF
# ---------------------------------------------------------------------------------------------


def _open_tiff(path: Path):
    import tifffile

    if not path.is_file():
        raise MovieFileError(f"{path}: file not found (expected a TIFF movie)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # tifffile warns on truncated IFD chains
            # every IFD read for real (tifffile's ScanImage shortcut guesses page offsets,
            # which miscounts frames and hides truncation)
            tif = tifffile.TiffFile(path, is_scanimage=False)
            pages = tif.pages
            pages.useframes = True
            npages = len(pages)
    except MovieFileError:
        raise
    except Exception as error:
        raise MovieFileError(f"{path}: not a readable TIFF ({type(error).__name__}: {error})") from None
    if npages == 0:
        tif.close()
        raise MovieFileError(f"{path}: TIFF has 0 frames (expected at least 1)")
    return tif


def _next_ifd_offset(tif, page) -> int | None:
    """The next-IFD offset written after ``page``'s IFD, or None when the file ends before it.

    Read from the file itself rather than from tifffile's page list: tifffile stops the page
    chain at an offset beyond the file's end and only logs it, so a cut file would look whole.
    """
    fmt, fh = tif.tiff, tif.filehandle
    fh.seek(page.offset)
    raw = fh.read(fmt.tagnosize)
    if len(raw) < fmt.tagnosize:
        return None
    (ntags,) = struct.unpack(fmt.tagnoformat, raw)
    fh.seek(page.offset + fmt.tagnosize + ntags * fmt.tagsize)
    raw = fh.read(fmt.offsetsize)
    if len(raw) < fmt.offsetsize:
        return None
    return struct.unpack(fmt.offsetformat, raw)[0]


def _page(tif, index: int, path: Path):
    """Page ``index``, or a MovieFileError when its header cannot be parsed (a cut IFD)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return tif.pages[index]
    except Exception as error:
        raise MovieFileError(
            f"{path}: page {index} of {len(tif.pages)} cannot be read ({type(error).__name__}: {error}); "
            f"file truncated or corrupt (expected {len(tif.pages)} complete pages)"
        ) from None


def _check_ifd_chain(tif, path: Path) -> None:
    """Raise unless the last page read is the last page written (its next-IFD offset is 0)."""
    pages, size = tif.pages, tif.filehandle.size
    npages = len(pages)
    following = _next_ifd_offset(tif, _page(tif, npages - 1, path))
    if following is None:
        raise MovieFileError(
            f"{path}: the file ends inside page {npages - 1}'s header at {size} bytes "
            f"(file truncated; expected a complete TIFF)"
        )
    if following != 0:
        raise MovieFileError(
            f"{path}: TIFF has {npages} readable pages, then page {npages} at byte {following} "
            f"{'beyond the end of the file' if following >= size else 'cannot be read'} ({size} bytes): "
            f"file truncated (expected the page chain to end at page {npages - 1})"
        )


def _check_page_data(tif, path: Path) -> None:
    """Raise if any page's pixel data extends past the end of the file."""
    size = tif.filehandle.size
    for index in range(len(tif.pages)):
        page = _page(tif, index, path)
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts)]
        if ends and max(ends) > size:
            raise MovieFileError(
                f"{path}: page {index}'s pixel data ends at byte {max(ends)}, beyond the end of the file at "
                f"{size} bytes (file truncated; expected every frame complete)"
            )


def _declared_pages(tif, si: dict | None, per_volume: int) -> tuple[int | None, str]:
    """Pages the file's own metadata says it holds: (count or None, which header says so)."""
    if si is not None and si.get("expected_frames"):
        return si["expected_frames"] * per_volume, "ScanImage header"
    if tif.is_imagej and (tif.imagej_metadata or {}).get("images"):
        return int(tif.imagej_metadata["images"]), "ImageJ header"
    if tif.is_shaped and tif.shaped_metadata:
        pixels = tif.pages[0].size
        total = sum(math.prod(meta.get("shape", [])) // pixels for meta in tif.shaped_metadata if pixels)
        return (total or None), "tifffile shape header"
    return None, ""


def _check_complete(tif, path: Path, si: dict | None, per_volume: int) -> None:
    """Raise :class:`MovieFileError` for a truncated TIFF, whatever wrote it.

    Three independent checks: the page count the header declares, the IFD chain ending where
    it should, and every page's pixel data lying inside the file.
    """
    npages = len(tif.pages)
    declared, source = _declared_pages(tif, si, per_volume)
    if declared and npages < declared and per_volume == 1:
        raise MovieFileError(
            f"{path}: TIFF has {npages} frames but its {source} says {declared} "
            f"(file truncated; expected {declared} frames)"
        )
    if declared and npages < declared:
        raise MovieFileError(
            f"{path}: TIFF has {npages} pages but its {source} says {declared} ({per_volume} channel(s) x "
            f"field(s) per frame; file truncated; expected {declared // per_volume} frames)"
        )
    _check_page_data(tif, path)
    _check_ifd_chain(tif, path)


def tiff_info(path: str | Path) -> MovieInfo:
    """The header of a TIFF movie (ScanImage or plain multipage).

    Raises
    ------
    MovieFileError
        Missing file, not a TIFF, no pages, a truncated file (fewer pages than its header
        declares, a page chain that points past the file's end, pixel data past the file's
        end), or pages that do not divide into whole time points.
    """
    path = Path(path)
    tif = _open_tiff(path)
    with tif:
        npages = len(tif.pages)
        page = tif.pages[0]
        if len(page.shape) != 2:
            raise MovieFileError(f"{path}: TIFF page has shape {page.shape} (expected a 2-D frame)")
        height, width = page.shape
        si = _scanimage_info(tif, page)
        info = MovieInfo(nframes=npages, height=height, width=width, dtype=str(page.dtype))
        if si is not None:
            info.nchannels, info.nfields = si["nchannels"], si["nfields"]
            info.fps, info.um_per_pixel = si["fps"], si["um_per_pixel"]
            info.software, info.header = si["software"], si["header"]
        elif tif.is_imagej:
            meta = tif.imagej_metadata or {}
            info.software = f"ImageJ TIFF {meta.get('ImageJ', '')}".strip()
            info.nchannels = int(meta.get("channels", 1))
            info.nfields = int(meta.get("slices", 1))
            if meta.get("finterval"):
                info.fps = 1.0 / float(meta["finterval"])
            info.header = dict(meta)
        per_volume = info.nchannels * info.nfields
        _check_complete(tif, path, si, per_volume)
        if npages % per_volume:
            raise MovieFileError(
                f"{path}: {npages} TIFF pages do not divide into {info.nchannels} channel(s) x "
                f"{info.nfields} field(s) (file truncated?)"
            )
        info.nframes = npages // per_volume
        return info


def _iter_tiff(path: Path, info: MovieInfo, channel: int, field_: int) -> Iterator[np.ndarray]:
    tif = _open_tiff(path)
    with tif:
        per_volume = info.nchannels * info.nfields
        offset = field_ * info.nchannels + channel
        for t in range(info.nframes):
            index = t * per_volume + offset
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    frame = tif.pages[index].asarray()
            except Exception as error:
                raise MovieFileError(
                    f"{path}: frame {t} (page {index}) cannot be read ({type(error).__name__}: {error}); "
                    f"file truncated or corrupt (expected {info.nframes} frames)"
                ) from None
            yield frame


# ---------------------------------------------------------------------------------------------
# HDF5
# ---------------------------------------------------------------------------------------------

_H5_NAMES = ("mov", "movie", "imaging", "data", "frames")


def _h5_dataset(f, path: Path, dataset: str | None):
    import h5py

    if dataset is not None:
        if dataset not in f:
            raise MovieFileError(f"{path}: no HDF5 dataset {dataset!r} (found {sorted(f)})")
        return f[dataset]
    names = [n for n in _H5_NAMES if n in f and isinstance(f[n], h5py.Dataset)]
    if not names:
        names = [n for n in f if isinstance(f[n], h5py.Dataset) and f[n].ndim >= 3]
    if not names:
        raise MovieFileError(f"{path}: no 3-D HDF5 dataset (expected one of {_H5_NAMES})")
    return f[names[0]]


def _h5_axes(ds, path: Path, axes: str | None = None) -> str:
    if axes is not None:
        if sorted(axes) != sorted(set(axes)) or len(axes) != ds.ndim or not set("yx") <= set(axes):
            raise MovieFileError(
                f"{path}: axes {axes!r} do not fit a dataset of shape {ds.shape} (expected e.g. 'tyx')"
            )
        return axes
    labels = ds.attrs.get("DIMENSION_LABELS")
    if labels is not None:
        return "".join((lab.decode() if isinstance(lab, bytes) else str(lab)).lower()[:1] for lab in labels)
    if "axes" in ds.attrs:
        return str(ds.attrs["axes"])
    if ds.ndim == 3:
        return "tyx"
    raise MovieFileError(f"{path}: HDF5 dataset of shape {ds.shape} has no DIMENSION_LABELS (expected (t, y, x))")


def h5_info(path: str | Path, dataset: str | None = None, axes: str | None = None) -> MovieInfo:
    """The header of an HDF5 movie.

    Axes come from ``axes`` (e.g. ``"yxt"`` for files written by SIMA or MATLAB), else the
    dataset's ``DIMENSION_LABELS`` or ``axes`` attribute, else ``"tyx"``.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise MovieFileError(f"{path}: file not found (expected an HDF5 movie)")
    try:  # the HDF5 library compares the file's size with the end address in its superblock
        f = h5py.File(path, "r")
    except Exception as error:
        raise MovieFileError(f"{path}: not a readable HDF5 file ({error})") from None
    with f:
        ds = _h5_dataset(f, path, dataset)
        axes = _h5_axes(ds, path, axes)
        size = dict(zip(axes, ds.shape))
        fps = ds.attrs.get("fps", f.attrs.get("fps"))
        info = MovieInfo(
            nframes=int(size.get("t", 1)),
            height=int(size["y"]),
            width=int(size["x"]),
            nchannels=int(size.get("c", 1)),
            nfields=int(size.get("z", 1)),
            fps=float(fps) if fps is not None else None,
            software="hdf5",
            dtype=str(ds.dtype),
            header={"dataset": ds.name, "axes": axes},
        )
        esize = ds.attrs.get("element_size_um")
        if esize is not None and len(esize) >= 2:
            info.um_per_pixel = float(esize[-1])
    if info.nframes == 0:
        raise MovieFileError(f"{path}: HDF5 movie has 0 frames (expected at least 1)")
    return info


def _iter_h5(path: Path, info: MovieInfo, channel: int, field_: int) -> Iterator[np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        ds = f[info.header["dataset"]]
        axes = info.header["axes"]
        for t in range(info.nframes):
            index = tuple({"t": t, "z": field_, "c": channel}.get(a, slice(None)) for a in axes)
            try:
                frame = ds[index]
            except (OSError, ValueError) as error:
                raise MovieFileError(
                    f"{path}: frame {t} cannot be read ({error}); file truncated or corrupt "
                    f"(expected {info.nframes} frames)"
                ) from None
            kept = [a for a in axes if a in "yx"]
            yield frame if kept == ["y", "x"] else frame.T


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".hdf"):
        return "hdf5"
    if suffix in (".tif", ".tiff"):
        return "tiff"
    raise MovieFileError(f"{path}: unknown movie format {suffix!r} (expected .tif, .tiff, .h5 or .hdf5)")


def movie_info(path: str | Path, *, axes: str | None = None) -> MovieInfo:
    """The header of a movie file, by its extension (``.tif``/``.tiff``, ``.h5``/``.hdf5``).

    ``axes`` names the axes of an HDF5 dataset without labels (see :func:`h5_info`).
    """
    path = Path(path)
    info = h5_info(path, axes=axes) if _kind(path) == "hdf5" else tiff_info(path)
    if np.dtype(info.dtype).kind not in "uif":
        raise MovieFileError(
            f"{path}: pixels are {info.dtype} (expected real numbers, integer or float; the imaginary part "
            f"of a complex movie would be silently dropped)"
        )
    return info


# the pipeline computes in float32: larger finite values would become inf silently
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_values(path: Path, t: int, frame: np.ndarray) -> None:
    """Raise for a frame with NaN/inf pixels or pixels beyond float32's range."""
    if frame.dtype.kind != "f":
        return
    if not np.isfinite(frame).all():
        bad = int((~np.isfinite(frame)).sum())
        raise MovieFileError(f"{path}: frame {t} has {bad} non-finite (NaN/inf) pixel(s) (expected finite values)")
    if frame.dtype.itemsize > 4:
        large = np.abs(frame) > _FLOAT32_MAX
        if large.any():
            raise MovieFileError(
                f"{path}: frame {t} has {int(large.sum())} pixel(s) beyond the float32 range (largest |value| "
                f"{float(np.abs(frame).max()):.3g}; expected |value| <= {_FLOAT32_MAX:.3g})"
            )


def iter_frames(
    path: str | Path, *, channel: int = 0, field: int = 0, check_finite: bool = True, axes: str | None = None
) -> Iterator[np.ndarray]:
    """Yield the frames of one channel and field, one ``(height, width)`` array at a time.

    Parameters
    ----------
    path
        The movie file.
    channel, field
        Which interleaved channel and field (plane), 0-based.
    check_finite
        Raise on a frame with NaN or infinite values, or values too large for float32 (the
        pipeline's working type, where they would turn into inf).

    Raises
    ------
    MovieFileError
        A frame that cannot be read (truncated file), holds non-finite values or values
        beyond float32's range; a movie of complex (or other non-real) pixels.
    """
    path = Path(path)
    info = movie_info(path, axes=axes)
    if not 0 <= channel < info.nchannels:
        raise MovieFileError(f"{path}: channel {channel} does not exist (expected 0..{info.nchannels - 1})")
    if not 0 <= field < info.nfields:
        raise MovieFileError(f"{path}: field {field} does not exist (expected 0..{info.nfields - 1})")
    frames = _iter_h5(path, info, channel, field) if _kind(path) == "hdf5" else _iter_tiff(path, info, channel, field)
    for t, frame in enumerate(frames):
        if check_finite:
            _check_values(path, t, frame)
        yield frame


def read_movie(
    path: str | Path, *, channel: int = 0, field: int = 0, dtype=np.float32, axes: str | None = None
) -> np.ndarray:
    """The whole movie of one channel and field, ``(frames, height, width)`` of ``dtype``."""
    info = movie_info(path, axes=axes)
    out = np.empty((info.nframes, info.height, info.width), dtype=dtype)
    for t, frame in enumerate(iter_frames(path, channel=channel, field=field, axes=axes)):
        out[t] = frame
    return out


def write_scanimage_tiff(
    path: str | Path,
    movie: np.ndarray,
    fps: float,
    *,
    um_per_pixel: float = 1.0,
    version: str = "2016b",
    dtype=np.int16,
) -> Path:
    """Write ``movie`` ``(frames, height, width)`` as a ScanImage-2016-like TIFF.

    Every page carries ScanImage's ``SI.*`` frame data in its Software tag (frame rate, saved
    channels, pixel field of view) and its frame number and time stamp in the description, as
    ScanImage 2016+ writes them, so that :func:`movie_info` reads it like a real scan.
    Values are rounded to ``dtype`` (int16, as ScanImage saves).
    """
    import tifffile

    path = Path(path)
    movie = np.asarray(movie)
    if movie.ndim != 3:
        raise ValueError(f"movie has shape {movie.shape} (expected (frames, height, width))")
    height, width = movie.shape[1:]
    info = np.iinfo(dtype)
    fov_w, fov_h = width * um_per_pixel, height * um_per_pixel
    software = "\n".join(
        [
            f"SI.VERSION_MAJOR = '{version}'",
            "SI.hChannels.channelSave = 1",
            "SI.hStackManager.enable = false",
            "SI.hStackManager.numSlices = 1",
            f"SI.hStackManager.framesPerSlice = {movie.shape[0]}",
            f"SI.hRoiManager.scanFrameRate = {float(fps)!r}",
            f"SI.hRoiManager.linesPerFrame = {height}",
            f"SI.hRoiManager.pixelsPerLine = {width}",
            f"SI.hRoiManager.imagingFovUm = [{-fov_w / 2} {-fov_h / 2};{fov_w / 2} {-fov_h / 2};"
            f"{fov_w / 2} {fov_h / 2};{-fov_w / 2} {fov_h / 2}]",
        ]
    )
    with tifffile.TiffWriter(path) as writer:
        for t, frame in enumerate(movie):
            data = np.clip(np.round(frame), info.min, info.max).astype(dtype)
            writer.write(
                data,
                # fixed-length descriptions: every page has the same layout, as ScanImage writes
                description=f"frameNumbers = {t + 1:<10d}\nframeTimestamps_sec = {t / fps:<16.6f}\n",
                software=software,
                metadata=None,
                contiguous=False,
            )
    return path
