"""Benchmark: every GPU path of the pipeline on the CPU and on CUDA, side by side.

Each path runs in a fresh process twice: once with every GPU hidden (``CUDA_VISIBLE_DEVICES=``)
and once with the GPU visible, so each uses the device the pipeline itself would choose
(``pipeline.device.choose_device``). On a machine without CUDA the GPU column says so and the
CPU figures still come out.

- ``pmd``: PMD denoising of a generated 256x256x2000 movie (``benchmarks/pmd.py``'s generator);
- ``spike_model``: training the supervised spike model (400 steps) and inference on 40 cells;
- ``training``: the sysid trainer, ``cnn_gaussian`` on a simulated population, 3 epochs;
- ``in_silico``: MEIs (100 steps) and grating tuning of all 300 neurons of that trained model.

Usage::

    python benchmarks/gpu.py --json gpu.json
    python benchmarks/gpu.py --cases pmd training --threads 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASES = ("pmd", "spike_model", "training", "in_silico")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def case_pmd() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pmd import Generated  # benchmarks/pmd.py

    from pipeline.imaging.frames import ArraySource
    from pipeline.imaging.pmd import denoise

    movie = np.asarray(ArraySource(np.stack(list(Generated("256x256x2000").frames()))).array)
    denoise(movie[:50, :64, :64], seed=0)  # warm-up (kernels, thresholds)
    _sync()
    started = time.perf_counter()
    result = denoise(movie, seed=0)
    _sync()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "frames_per_second": movie.shape[0] / seconds, "rank": result.rank}


def case_spike_model() -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from spikes_helpers import simulate_recordings

    from pipeline.spikes.supervised import predict, train_spike_model

    recordings = simulate_recordings(40, seed=0, frames=3000, fps=30.0)
    started = time.perf_counter()
    model = train_spike_model(recordings[:20], steps=400, seed=0)
    _sync()
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for r in recordings:
        predict(model, r["calcium"], r["fps"])
    _sync()
    infer_seconds = time.perf_counter() - started
    return {
        "seconds": train_seconds,
        "steps_per_second": 400 / train_seconds,
        "cells_per_second": len(recordings) / infer_seconds,
        "score": model.score,
    }


def _trained_model(folder: Path):
    from pipeline import identity
    from pipeline.simulation.population import simulate_population

    path = simulate_population(folder / "population", n_neurons=300, n_train=3000, n_test_images=50, repeats=5, seed=0)
    loaders = identity.resolve("dataset", "filetree")(0, paths=[str(path)], batch_size=64)
    model_fn = identity.resolve("model", "cnn_gaussian")
    model = model_fn(loaders, 0, **identity.normalize(model_fn, {}))
    trainer_fn = identity.resolve("trainer", "standard_trainer")
    config = identity.normalize(trainer_fn, {"max_epochs": 3, "patience": 10})
    started = time.perf_counter()
    result = trainer_fn(model, loaders, 0, progress=False, **config)
    _sync()
    return model, loaders, result, time.perf_counter() - started


def case_training() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        _model, _loaders, result, seconds = _trained_model(Path(tmp))
    return {
        "seconds": seconds,
        "seconds_per_epoch": result.output["seconds_per_epoch"],
        "images_per_second": result.output["images_per_second"],
        "validation_correlation": result.score,
    }


def case_in_silico() -> dict:
    from pipeline import insilico

    with tempfile.TemporaryDirectory() as tmp:
        model, loaders, _result, _seconds = _trained_model(Path(tmp))
        train = loaders["train"][next(iter(loaders["train"]))]
        shape = tuple(next(iter(train))["images"].shape[1:])
        key = next(iter(loaders["train"]))
        respond = insilico.response_function(model, key, insilico.mean_behavior(train))
        n = train.dataset.n_neurons  # every unit of the model
        started = time.perf_counter()
        insilico.mei_experiment(respond, shape, n, 0, steps=100)
        insilico.grating_tuning_experiment(respond, shape, n, 0)
        _sync()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "neurons_per_second": n / seconds}


def run_case(name: str, device: str, threads: int, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", name, "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all cores)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per case and device")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        sys.path.insert(0, str(ROOT))
        out = globals()[f"case_{args.case}"]()
        out["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        print(json.dumps(out, default=float))
        return 0

    import torch

    has_cuda = torch.cuda.is_available()
    rows = {}
    for name in args.cases:
        rows[name] = {"cpu": run_case(name, "cpu", args.threads, args.timeout)}
        rows[name]["cuda"] = (
            run_case(name, "cuda", args.threads, args.timeout) if has_cuda else {"absent": "no CUDA device here"}
        )
        print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)

    header = f"{'path':<13}{'measure':<24}{'CPU':>12}{'GPU':>12}{'GPU/CPU':>10}"
    print(f"torch {torch.__version__}; CPU threads {args.threads}; GPU: {rows and _gpu_name(rows)}")
    print(header)
    print("-" * len(header))
    for name, pair in rows.items():
        measures = [k for k in pair["cpu"] if k not in ("device", "gpu", "error")] or ["error"]
        for measure in measures:
            cpu, gpu = pair["cpu"].get(measure), pair["cuda"].get(measure)
            ratio = gpu / cpu if isinstance(cpu, (int, float)) and isinstance(gpu, (int, float)) and cpu else None
            print(
                f"{name:<13}{measure:<24}{_cell(cpu, pair['cpu']):>12}{_cell(gpu, pair['cuda']):>12}"
                f"{'-' if ratio is None else format(ratio, '.3g'):>10}"
            )
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "rows": rows}, indent=2))
    return 0


def _gpu_name(rows: dict) -> str:
    names = {pair["cuda"].get("gpu") for pair in rows.values()} - {None}
    return ", ".join(sorted(names)) or "none"


def _cell(value, row: dict) -> str:
    if isinstance(value, (int, float)):
        return format(value, ".4g")
    return "error" if "error" in row else "no CUDA" if "absent" in row else "-"


if __name__ == "__main__":
    sys.exit(main())
