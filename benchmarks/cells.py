"""Benchmark: cells and traces from simulated scans against their ground truth.

Runs the whole imaging chain on simulated experiments (with motion): motion correction, PMD,
segmentation, trace extraction, and scores segmentation recall and precision against the true
soma masks (a match is mask IoU >= 0.5, one-to-one) and the Pearson correlation of each
matched cell's extracted fluorescence (and dF/F) with its true calcium. Targets: recall and
precision >= 0.9, median trace correlation >= 0.9. Prints a table, writes JSON (``--json``).

Usage::

    python benchmarks/cells.py                       # seeds 1 2 3 at 128x128x2000, 200 cells
    python benchmarks/cells.py --seeds 1 --size 64x64x1000 --cells 50 --json cells.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(seed: int, height: int, width: int, n_frames: int, n_cells: int) -> dict:
    from pipeline.imaging import motion, pmd, segmentation, traces
    from pipeline.simulation.experiment import simulate_experiment

    times = {}
    start = time.perf_counter()
    exp = simulate_experiment(seed, n_cells=n_cells, height=height, width=width, n_frames=n_frames)
    times["simulate"] = time.perf_counter() - start

    start = time.perf_counter()
    template, shifts = motion.motion_correction(exp.movie)
    corrected = motion.correct(exp.movie, shifts)
    times["motion"] = time.perf_counter() - start
    # the corrected movie's frame of reference is the median position, not the simulation's 0
    offset = np.round(np.median(shifts - exp.shifts, axis=0)).astype(int)
    shift_error = float(np.abs(shifts - exp.shifts - offset).max())

    start = time.perf_counter()
    denoised = pmd.denoise(corrected, seed=0)
    times["pmd"] = time.perf_counter() - start

    start = time.perf_counter()
    found = segmentation.segment(denoised.reconstruct())
    times["segmentation"] = time.perf_counter() - start

    start = time.perf_counter()
    out = traces.extract_traces(denoised, found.weights, exp.fps)
    times["traces"] = time.perf_counter() - start

    truth = np.roll(exp.masks, tuple(offset), axis=(1, 2))
    match = segmentation.match_masks(found.masks, truth)
    pairs = match["pairs"]

    def corr(a, b):
        return float(np.corrcoef(a, b)[0, 1])

    f_corr = np.array([corr(out["fluorescence"][i], exp.calcium[j]) for i, j in pairs])
    d_corr = np.array([corr(out["dff"][i], exp.calcium[j]) for i, j in pairs])
    return {
        "seed": seed,
        "size": f"{height}x{width}x{n_frames}",
        "cells": n_cells,
        "found": len(found),
        "recall": match["recall"],
        "precision": match["precision"],
        "median_iou": float(np.median(match["iou"])) if len(pairs) else float("nan"),
        "median_trace_corr": float(np.median(f_corr)) if len(pairs) else float("nan"),
        "median_dff_corr": float(np.median(d_corr)) if len(pairs) else float("nan"),
        "p10_trace_corr": float(np.percentile(f_corr, 10)) if len(pairs) else float("nan"),
        "max_shift_error_px": shift_error,
        "pmd_rank": denoised.rank,
        "pmd_compression": denoised.compression_ratio,
        "seconds": times,
        "chain_seconds": sum(v for k, v in times.items() if k != "simulate"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--size", default="128x128x2000", help="HxWxT")
    parser.add_argument("--cells", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    h, w, t = (int(v) for v in args.size.split("x"))
    rows = []
    for seed in args.seeds:
        rows.append(run(seed, h, w, t, args.cells))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    header = (
        f"{'seed':>5}{'size':>15}{'cells':>7}{'found':>7}{'recall':>8}{'precision':>10}"
        f"{'IoU':>6}{'r(F)':>7}{'r(dF/F)':>9}{'chain s':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['seed']:>5}{r['size']:>15}{r['cells']:>7}{r['found']:>7}{r['recall']:>8.3f}{r['precision']:>10.3f}"
            f"{r['median_iou']:>6.2f}{r['median_trace_corr']:>7.3f}{r['median_dff_corr']:>9.3f}{r['chain_seconds']:>9.1f}"
        )
    summary = {
        k: float(np.mean([r[k] for r in rows]))
        for k in ("recall", "precision", "median_trace_corr", "median_dff_corr", "chain_seconds")
    }
    print(
        f"mean  recall {summary['recall']:.3f}  precision {summary['precision']:.3f}  "
        f"median r(F) {summary['median_trace_corr']:.3f}  r(dF/F) {summary['median_dff_corr']:.3f}  "
        f"(targets >= 0.9 each)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "mean": summary, "threads": args.threads}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
