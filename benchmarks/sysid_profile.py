"""Where a training step's time goes: data loading vs compute, and the variants that might pay.

One ``cnn_gaussian`` at ``benchmarks/sysid.py``'s peer architecture (3 layers, 32 channels,
9- and 5-pixel kernels) on its simulated population (500 neurons, 18 x 32 images), batch 64: the median milliseconds per
batch of loading alone (the DataLoader), and of a whole step (load, forward, Poisson loss,
backward, Adam) in float32, channels-last, bfloat16 autocast, and both. Prints a table and
writes JSON (``--json``)::

    python benchmarks/sysid_profile.py --threads 2 --json profile.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import identity  # noqa: E402
from pipeline.device import choose_device  # noqa: E402
from pipeline.sysid import models, training  # noqa: E402,F401

ARCHITECTURE = {
    "layers": 3,
    "input_kernel": 9,
    "hidden_kernel": 5,
    "pad_input": True,
    "gamma_input": 1.0,
    "hidden_channels": 32,
    "gamma_readout": 1e-4,
}
VARIANTS = {
    "float32": (False, False),
    "channels_last": (True, False),
    "bfloat16": (False, True),
    "bfloat16+channels_last": (True, True),
}


def step_times(loaders, key, variant: str, batches: int, device) -> list[float]:
    channels_last, bf16 = VARIANTS[variant]
    fn = identity.resolve("model", "cnn_gaussian")
    model = fn(loaders, 0, **identity.normalize(fn, ARCHITECTURE)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    times = []
    iterator = iter(loaders["train"][key])
    for _ in range(batches):
        started = time.perf_counter()
        batch = next(iterator)
        images = batch["images"].to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            predictions = model(
                images,
                data_key=key,
                behavior=batch["behavior"].to(device),
                pupil_center=batch["pupil_center"].to(device),
            )
        loss = training.poisson_loss(predictions.float(), batch["responses"].to(device)) + model.regularizer(key)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=25, help="timed batches per variant (first 3 not counted)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from pipeline.simulation.population import simulate_population

    device = choose_device()
    with tempfile.TemporaryDirectory() as tmp:
        path = simulate_population(
            Path(tmp) / "population",
            n_neurons=500,
            n_train=64 * (args.batches + 2),
            n_test_images=20,
            repeats=2,
            height=18,
            width=32,
        )
        loaders = identity.resolve("dataset", "filetree")(0, paths=[str(path)], batch_size=64)
        key = next(iter(loaders["train"]))
        started, loading = time.perf_counter(), []
        for _batch in loaders["train"][key]:
            loading.append(time.perf_counter() - started)
            started = time.perf_counter()
        rows = {"loading only": float(np.median(loading[3:]) * 1000)}
        for variant in VARIANTS:
            rows[variant] = float(np.median(step_times(loaders, key, variant, args.batches, device)[3:]) * 1000)
    base = rows["float32"]
    print(f"device {device}, {args.threads} thread(s), batch 64, 500 neurons, 18 x 32 images")
    print(f"{'':24s}{'ms/batch':>10s}{'vs float32':>12s}")
    for name, ms in rows.items():
        print(f"{name:24s}{ms:10.1f}{ms / base:12.2f}")
    if args.json:
        args.json.write_text(
            json.dumps({"device": str(device), "threads": args.threads, "ms_per_batch": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
