"""Benchmark: our PMD denoiser beside localmd 0.0.4 on simulated movies with a noiseless truth.

For every movie, each tool runs in its own process (ours in this environment, localmd in its
own virtual environment) and reports: wall time of the decomposition, peak resident memory
during it above the process's memory before the movie was loaded (so the loaded movie itself
counts, 1x), SNR gain against the truth (RMSE(raw - truth) / RMSE(denoised - truth)) and the
compression ratio (bytes of the raw movie / bytes of the stored factors). Prints a table with
our/their ratios and writes the figures as JSON (``--json``).

Usage::

    python benchmarks/pmd.py                          # 64x64x1000, 128x128x2000, 256x256x2000
    python benchmarks/pmd.py --sizes 64x64x1000 --json results.json
    python benchmarks/pmd.py --movie M.npy --truth T.npy   # any (frames, height, width) movie

``--streaming`` measures the other thing: memory against movie size when the movie is not in
memory. Movies up to 512x512x10000 are generated on the fly, a block of frames at a time (a
``FrameSource``, as the pipeline reads a scan file), and denoised streamed and, where they fit
(``--memory-limit-gb``), in memory; the table shows peak memory of each, and whether the two
gave bit-identical factors (a digest of them), the SNR gain estimate and the compression::

    python benchmarks/pmd.py --streaming --json streaming.json
    python benchmarks/pmd.py --streaming --sizes 128x128x1000 128x128x8000 --block-mb 16
    python benchmarks/pmd.py --streaming --segment --sizes 256x256x4000   # and segmentation's memory

localmd is looked for in ``../peers/localmd`` beside the project (``--localmd-python``):
create it with ``python -m venv ../peers/localmd && ../peers/localmd/bin/pip install
torch==2.13.0 localmd==0.0.4`` (torch first, so no CUDA wheels are pulled).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOCALMD = ROOT.parent / "peers" / "localmd" / "bin" / "python"
SIZES = ("64x64x1000", "128x128x2000", "256x256x2000")
STREAM_SIZES = ("128x128x1000", "128x128x4000", "128x128x16000", "256x256x4000", "512x512x2000", "512x512x10000")


# ---------------------------------------------------------------------------------------------
# worker side: one tool on one movie, in a fresh process
# ---------------------------------------------------------------------------------------------


class PeakRSS:
    """Samples this process's resident memory every few milliseconds; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _run_ours(movie: np.ndarray, threads: int):
    import torch

    torch.set_num_threads(threads)
    from pipeline.imaging.pmd import denoise

    result = denoise(movie, seed=0)
    return result, result.compression_ratio, result.rank


def _run_localmd(movie: np.ndarray, threads: int):
    import scipy.sparse
    from localmd.dataset import PMDDataset
    from localmd.decomposition import localmd_decomposition

    class InMemory(PMDDataset):
        def __init__(self, array):
            self.array = array  # (frames, height, width)

        @property
        def shape(self):
            t, h, w = self.array.shape
            return (h, w, t)

        def get_frames(self, frames):
            return np.asarray(self.array[frames]).transpose(1, 2, 0)

    t, h, w = movie.shape
    block = min(32, h, w)
    U, R, s, V, std_img, mean_img, shape, order = localmd_decomposition(
        InMemory(movie),
        [block, block],
        [10, 10],
        t,
        max_components=40,
        background_rank=15,
        sim_conf=5,
        tiff_batch_size=500,
        dtype="float32",
        num_workers=0,
        pixel_batch_size=5000,
        max_consec_failures=1,
    )
    U = scipy.sparse.csr_matrix(U)
    stored = U.data.nbytes + U.indices.nbytes + U.indptr.nbytes
    stored += np.asarray(R).nbytes + np.asarray(s).nbytes + np.asarray(V).nbytes
    stored += np.asarray(std_img).nbytes + np.asarray(mean_img).nbytes

    class Factors:
        def reconstruct(self):
            rsv = np.asarray(R).dot(np.asarray(s)[:, None] * np.asarray(V))
            out = np.asarray(U.dot(rsv)).reshape((shape[0], shape[1], -1), order=order)
            out = out * np.asarray(std_img)[:, :, None] + np.asarray(mean_img)[:, :, None]
            return out.transpose(2, 0, 1).astype(np.float32)

    return Factors(), movie.nbytes / stored, int(np.asarray(s).shape[0])


def _import(tool: str) -> None:
    # libraries are loaded before the baseline is taken: their code is not the movie's cost
    if tool == "ours":
        import torch  # noqa: F401

        import pipeline.imaging.pmd  # noqa: F401
    else:
        import jax.numpy  # noqa: F401
        import localmd.decomposition  # noqa: F401
        import scipy.sparse  # noqa: F401


def worker(tool: str, movie_path: str, truth_path: str | None, threads: int) -> dict:
    _import(tool)
    before = PeakRSS.rss()
    movie = np.load(movie_path)
    if movie.ndim != 3:
        raise SystemExit(f"{movie_path}: shape {movie.shape} (expected (frames, height, width))")
    movie = np.ascontiguousarray(movie, dtype=np.float32)
    with PeakRSS() as mem:
        start = time.perf_counter()
        result, ratio, rank = (_run_ours if tool == "ours" else _run_localmd)(movie, threads)
        wall = time.perf_counter() - start
    out = {
        "tool": tool,
        "wall_s": wall,
        "peak_rss_bytes": mem.peak - before,
        "raw_bytes": int(movie.nbytes),
        "peak_over_raw": (mem.peak - before) / movie.nbytes,
        "compression_ratio": float(ratio),
        "rank": int(rank),
    }
    if truth_path:
        truth = np.load(truth_path, mmap_mode="r")
        denoised = result.reconstruct()
        err_raw = err_den = 0.0
        for start in range(0, movie.shape[0], 250):
            tr = np.asarray(truth[start : start + 250], dtype=np.float64)
            err_raw += float(((movie[start : start + 250] - tr) ** 2).sum())
            err_den += float(((denoised[start : start + 250] - tr) ** 2).sum())
        out["snr_gain"] = float(np.sqrt(err_raw / err_den))
    return out


class Generated:
    """A synthetic movie made a frame at a time: the same frames whatever the block size.

    ~0.012 Gaussian cells per pixel in 24 ensembles; each ensemble is active as
    ``max(0, sin(2 pi f t + phase))**4`` at a frequency of its own, over unit white noise drawn
    from a generator seeded by (seed, frame). A frame costs 24 image-sized sums, so movies of
    512 x 512 x 10000 are made in minutes.
    """

    def __init__(self, size: str, seed: int = 0, ensembles: int = 24):
        h, w, t = (int(v) for v in size.split("x"))
        self.shape = (t, h, w)
        self.seed = seed
        rng = np.random.default_rng(seed)
        n = max(4, int(round(h * w * 200 / (128 * 128))))
        maps = np.zeros((ensembles, h, w), dtype=np.float32)
        r = 6  # footprint radius (pixels): exp(-d^2 / 8) is < 1e-3 beyond it
        offsets = np.arange(-r, r + 1)
        patch = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / 8.0).astype(np.float32)
        for cy, cx, group, amplitude in zip(
            rng.integers(0, h, n), rng.integers(0, w, n), rng.integers(0, ensembles, n), rng.uniform(2, 5, n)
        ):
            y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
            maps[group, y0:y1, x0:x1] += amplitude * patch[y0 - cy + r : y1 - cy + r, x0 - cx + r : x1 - cx + r]
        self.maps = maps.reshape(ensembles, -1)
        self.freq, self.phase = rng.uniform(0.002, 0.02, ensembles), rng.uniform(0, 2 * np.pi, ensembles)

    def frames(self):
        t_all, h, w = self.shape
        for t in range(t_all):
            activity = (np.maximum(0.0, np.sin(2 * np.pi * self.freq * t + self.phase)) ** 4).astype(np.float32)
            noise = np.random.default_rng([self.seed, t]).standard_normal(h * w, dtype=np.float32)
            yield (10.0 + activity @ self.maps + noise).reshape(h, w)


def _digest(result) -> str:
    import hashlib

    sha = hashlib.sha256()
    for name, value in sorted(result.to_arrays().items()):
        sha.update(name.encode())
        sha.update(np.ascontiguousarray(value).tobytes())
    return sha.hexdigest()[:16]


def stream_worker(size: str, mode: str, block_mb: float, threads: int, segment: bool = False) -> dict:
    """PMD on a generated movie, streamed (``mode="stream"``) or loaded whole first (``"memory"``)."""
    import torch

    torch.set_num_threads(threads)
    from pipeline.imaging.frames import FrameSource
    from pipeline.imaging.pmd import denoise

    generated = Generated(size)

    class Source(FrameSource):
        def frames(self):
            return generated.frames()

    source = Source(generated.shape, block_bytes=int(block_mb * 2**20))
    before = PeakRSS.rss()
    with PeakRSS() as mem:
        start = time.perf_counter()
        result = denoise(source if mode == "stream" else np.asarray(source), seed=0)
        wall = time.perf_counter() - start
    factors = result.stored_nbytes
    segmented = {}
    if segment:
        from pipeline.imaging.segmentation import segment as find_cells

        before = PeakRSS.rss()
        with PeakRSS() as seg_mem:
            started = time.perf_counter()
            movie = result.frames(block_bytes=source.block_bytes) if mode == "stream" else result.reconstruct()
            found = find_cells(movie)
            segmented = {
                "segmentation_wall_s": time.perf_counter() - started,
                "segmentation_peak_rss_bytes": seg_mem.peak - before,
                "cells": len(found),
            }
    return {
        **segmented,
        "size": size,
        "mode": mode,
        "wall_s": wall,
        "movie_bytes": source.nbytes,
        "factor_bytes": factors,
        "block_bytes": source.frames_per_block * source.shape[1] * source.shape[2] * 4,
        "peak_rss_bytes": mem.peak - before,
        "peak_over_movie": (mem.peak - before) / source.nbytes,
        "snr_gain_estimate": float(result.snr_gain_estimate),
        "compression_ratio": float(result.compression_ratio),
        "rank": result.rank,
        "digest": _digest(result),
    }


def streaming(args) -> int:
    sizes = args.sizes if args.sizes != list(SIZES) else list(STREAM_SIZES)
    rows = []
    for size in sizes:
        h, w, t = (int(v) for v in size.split("x"))
        for mode in ("stream", "memory"):
            if mode == "memory" and h * w * t * 4 * 2 > args.memory_limit_gb * 2**30:
                rows.append(
                    {"size": size, "mode": mode, "error": f"skipped: over --memory-limit-gb {args.memory_limit_gb}"}
                )
                continue
            cmd = ["nice", sys.executable, str(Path(__file__).resolve()), "--stream-worker", size, mode]
            cmd += ["--block-mb", str(args.block_mb), "--threads", str(args.threads)] + (
                ["--segment"] if args.segment else []
            )
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
                row = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
                if row is None:
                    row = {"size": size, "mode": mode, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
            except subprocess.TimeoutExpired:
                row = {"size": size, "mode": mode, "error": f"timed out after {args.timeout:.0f} s"}
            rows.append(row)
            print(f"{size} {mode}: {row}", file=sys.stderr, flush=True)
    digests = {}
    for row in rows:
        digests.setdefault(row["size"], {})[row["mode"]] = row.get("digest")
    header = (
        f"{'movie':<15}{'mode':<8}{'movie MB':>10}{'block MB':>10}{'factors MB':>11}{'peak MB':>9}"
        f"{'peak/movie':>11}{'wall s':>8}{'SNR est':>9}{'compress':>10}{'rank':>6}  identical"
    )
    print(header)
    print("-" * len(header))
    mb = 2**20
    for row in rows:
        if "error" in row:
            print(f"{row['size']:<15}{row['mode']:<8}  {row['error']}")
            continue
        pair = digests[row["size"]]
        same = "-" if None in (pair.get("stream"), pair.get("memory")) else str(pair["stream"] == pair["memory"])
        row["identical_to_other_mode"] = None if same == "-" else same == "True"
        print(
            f"{row['size']:<15}{row['mode']:<8}{row['movie_bytes'] / mb:>10.0f}{row['block_bytes'] / mb:>10.1f}"
            f"{row['factor_bytes'] / mb:>11.1f}{row['peak_rss_bytes'] / mb:>9.0f}{row['peak_over_movie']:>11.3f}"
            f"{row['wall_s']:>8.1f}{row['snr_gain_estimate']:>9.2f}{row['compression_ratio']:>10.1f}{row['rank']:>6d}"
            f"  {same}"
        )
    if args.segment:
        print(f"\n{'movie':<15}{'mode':<8}{'cells':>7}{'segment peak MB':>17}{'wall s':>8}")
        for row in rows:
            if "cells" in row:
                print(
                    f"{row['size']:<15}{row['mode']:<8}{row['cells']:>7d}"
                    f"{row['segmentation_peak_rss_bytes'] / mb:>17.0f}{row['segmentation_wall_s']:>8.1f}"
                )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"threads": args.threads, "block_mb": args.block_mb, "rows": rows}, indent=2)
        )
    return 0


# ---------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------


def simulate(size: str, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A motion-free simulated movie of ``HxWxT`` with ~0.012 cells per pixel and its truth."""
    sys.path.insert(0, str(ROOT))
    from pipeline.simulation.experiment import simulate_experiment

    h, w, t = (int(v) for v in size.split("x"))
    n_cells = max(4, int(round(h * w * 200 / (128 * 128))))
    exp = simulate_experiment(seed, n_cells=n_cells, height=h, width=w, n_frames=t, max_shift=0, keep_clean=True)
    movie, truth = folder / f"movie_{size}.npy", folder / f"truth_{size}.npy"
    np.save(movie, exp.movie)
    np.save(truth, exp.clean)
    return movie, truth


def run_tool(tool: str, python: str, movie: Path, truth: Path | None, threads: int, timeout: float) -> dict:
    cmd = [
        "nice",
        python,
        str(Path(__file__).resolve()),
        "--worker",
        tool,
        "--movie",
        str(movie),
        "--threads",
        str(threads),
    ]
    if truth is not None:
        cmd += ["--truth", str(truth)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"tool": tool, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), help="HxWxT movies to simulate")
    parser.add_argument("--movie", help="score this (frames, height, width) .npy movie instead")
    parser.add_argument("--truth", help="the noiseless truth of --movie (.npy, same shape)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--tools", nargs="*", default=["ours", "localmd"], choices=["ours", "localmd"])
    parser.add_argument("--localmd-python", default=str(DEFAULT_LOCALMD))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per tool and movie")
    parser.add_argument("--worker", choices=["ours", "localmd"], help=argparse.SUPPRESS)
    parser.add_argument("--streaming", action="store_true", help="memory against movie size, streamed vs in memory")
    parser.add_argument(
        "--block-mb", type=float, default=64.0, help="--streaming: MiB of frames per block (default 64)"
    )
    parser.add_argument(
        "--memory-limit-gb", type=float, default=8.0, help="--streaming: skip in-memory runs needing more (default 8)"
    )
    parser.add_argument(
        "--segment", action="store_true", help="--streaming: also find cells in the denoised movie (peak memory)"
    )
    parser.add_argument("--stream-worker", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.stream_worker:
        print(json.dumps(stream_worker(*args.stream_worker, args.block_mb, args.threads, args.segment)))
        return 0
    if args.streaming:
        return streaming(args)

    if args.worker:
        print(json.dumps(worker(args.worker, args.movie, args.truth, args.threads)))
        return 0

    pythons = {"ours": sys.executable, "localmd": args.localmd_python}
    if "localmd" in args.tools and not Path(args.localmd_python).exists():
        print(f"localmd not found at {args.localmd_python}; running ours only", file=sys.stderr)
        args.tools = [t for t in args.tools if t != "localmd"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pmd_bench_") as tmp:
        if args.movie:
            cases = [(Path(args.movie).stem, Path(args.movie), Path(args.truth) if args.truth else None)]
        else:
            cases = []
            for size in args.sizes:
                movie, truth = simulate(size, Path(tmp))
                cases.append((size, movie, truth))
        for name, movie, truth in cases:
            row = {"movie": name}
            for tool in args.tools:
                row[tool] = run_tool(tool, pythons[tool], movie, truth, args.threads, args.timeout)
                print(f"{name} {tool}: {row[tool]}", file=sys.stderr, flush=True)
            ours, theirs = row.get("ours", {}), row.get("localmd", {})
            row["ratios"] = {
                k: ours[k] / theirs[k]
                for k in ("wall_s", "peak_over_raw", "snr_gain", "compression_ratio")
                if isinstance(ours.get(k), (int, float)) and isinstance(theirs.get(k), (int, float)) and theirs[k]
            }
            rows.append(row)

    header = f"{'movie':<14}{'tool':<9}{'wall s':>9}{'peak/raw':>10}{'SNR gain':>10}{'compress':>10}{'rank':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        for tool in args.tools:
            r = row[tool]
            if "error" in r:
                print(f"{row['movie']:<14}{tool:<9}  error: {r['error']}")
                continue
            print(
                f"{row['movie']:<14}{tool:<9}{_fmt(r['wall_s'], '9.1f')}{_fmt(r['peak_over_raw'], '10.2f')}"
                f"{_fmt(r.get('snr_gain'), '10.2f')}{_fmt(r['compression_ratio'], '10.1f')}{r['rank']:>7d}"
            )
        rt = row["ratios"]
        if rt:
            print(
                f"{row['movie']:<14}{'ours/lmd':<9}{_fmt(rt.get('wall_s'), '9.2f')}{_fmt(rt.get('peak_over_raw'), '10.2f')}"
                f"{_fmt(rt.get('snr_gain'), '10.2f')}{_fmt(rt.get('compression_ratio'), '10.2f')}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
