"""`pipeline demo`: the main job end to end on a simulated experiment, with an honest summary.

The demo registers a simulated scan (cells viewing natural images, with behaviour) and a
simulated population in the Sensorium FileTree layout, inserts the default parameter sets,
and populates every table from ``ScanInfo`` to ``TrainedModel`` and ``Score``. It then scores
what the pipeline found against the simulation's ground truth. Every step is idempotent:
rerunning it (after Ctrl-C, say) computes only what is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEMO_SCAN = {"animal_id": 1, "session": 1, "scan_idx": 1}
DEMO_VIDEO_SCAN = {"animal_id": 1, "session": 1, "scan_idx": 2}
# the video scan's movies are stimulus rows from this id on (the image scan's start at 0)
VIDEO_IMAGE_IDS = 100_000
SCAN_DATASET = "demo_scan"
POPULATION_DATASET = "demo_population"
VIDEO_DATASET = "demo_video"


@dataclass(frozen=True)
class DemoSize:
    """How big the demo's simulated data and models are."""

    scan: dict
    population: dict
    models: dict
    trainer: dict
    dataset: dict = field(default_factory=dict)
    seeds: tuple = (0,)
    spike_methods: tuple = (("deconvolution", {"order": 1}), ("deconvolution", {"order": 2}))
    # the video scan (pipeline.simulation.video.simulate_video_scan) and its models, by label
    video_scan: dict = field(default_factory=dict)
    video_models: dict = field(default_factory=dict)
    video_trainer: dict = field(default_factory=dict)
    video_dataset: dict = field(default_factory=lambda: {"clip_frames": 20, "batch_size": 8})


_CORE = {"layers": 3, "hidden_channels": 16, "input_kernel": 9, "hidden_kernel": 5}
_VIDEO = {"layers": 2, "hidden_channels": 8, "input_kernel": 7, "input_temporal": 9}
SIZES = {
    # the README's main job: a few hundred cells, finishes in minutes on 2 CPU cores
    "full": DemoSize(
        scan=dict(n_cells=200, height=128, width=128, n_frames=6000, n_images=360, n_test_images=10),
        population=dict(n_neurons=150, n_train=2500, n_test_images=50, repeats=10),
        models={
            "linear_nonlinear": {},
            "cnn_factorized": dict(_CORE),
            "cnn_gaussian": dict(_CORE),
        },
        trainer=dict(max_epochs=12, patience=3, lr=5e-3),
        dataset=dict(batch_size=32),
        video_scan=dict(n_cells=40, height=64, width=64, frames=40, n_train=60, n_validation=10, n_test_videos=4),
        video_models={"video only": dict(_VIDEO, latent_dim=0), "latent": dict(_VIDEO, latent_dim=4)},
        video_trainer=dict(max_epochs=8, patience=3, lr=5e-3),
    ),
    # tests and notebooks in CI: the same tables, tiny data
    "small": DemoSize(
        scan=dict(n_cells=20, height=48, width=48, n_frames=600, n_images=24, n_test_images=4),
        population=dict(n_neurons=20, n_train=300, n_test_images=10, repeats=5, height=18, width=32),
        models={
            "linear_nonlinear": {},
            "cnn_factorized": dict(_CORE, layers=2, hidden_channels=8),
            "cnn_gaussian": dict(_CORE, layers=2, hidden_channels=8),
        },
        trainer=dict(max_epochs=3, patience=2, lr=5e-3),
        video_scan=dict(n_cells=12, height=40, width=40, frames=20, n_train=16, n_validation=10, n_test_videos=2),
        video_models={"video only": dict(_VIDEO, latent_dim=0), "latent": dict(_VIDEO, latent_dim=2)},
        video_trainer=dict(max_epochs=1, lr=5e-3),
    ),
}


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def simulated_experiment(size: DemoSize, seed: int):
    """The demo's scan with its ground truth (deterministic: regenerated, never stored)."""
    from pipeline.simulation.experiment import simulate_experiment

    return simulate_experiment(seed, **size.scan)


def simulated_video_scan(size: DemoSize, seed: int):
    """The demo's video scan with its ground truth (latents included; regenerated, never stored)."""
    from pipeline.simulation.video import simulate_video_scan

    return simulate_video_scan(seed, **size.video_scan)


def population_folder(size_name: str, seed: int) -> Path:
    from . import database

    return database.home() / "demo" / f"population_{size_name}_seed{seed}"


def register_inputs(size_name: str, seed: int) -> dict:
    """Insert the simulated scan, the population dataset and every parameter set; return keys."""
    from pipeline.simulation.population import simulate_population

    from . import imaging, params, sysid
    from .ingest import insert_default_parameters

    size = SIZES[size_name]
    if not imaging.Scan & DEMO_SCAN:
        _say(
            f"simulating a scan: {size.scan['n_cells']} cells, {size.scan['height']} x {size.scan['width']} "
            f"pixels, {size.scan['n_frames']} frames"
        )
        imaging.insert_simulated_scan(simulated_experiment(size, seed), DEMO_SCAN, note=f"demo {size_name} seed {seed}")
    if size.video_scan and not imaging.Scan & DEMO_VIDEO_SCAN:
        v = size.video_scan
        _say(
            f"simulating a video scan: {v['n_cells']} cells watching movies, {v['height']} x {v['width']} pixels, "
            f"{v['frames']} frames per trial"
        )
        imaging.insert_simulated_scan(
            simulated_video_scan(size, seed),
            DEMO_VIDEO_SCAN,
            image_id_offset=VIDEO_IMAGE_IDS,
            note=f"demo {size_name} seed {seed}",
        )
    defaults = insert_default_parameters(size.spike_methods)
    imaging_keys, spike_keys, window_key = defaults["imaging"], defaults["spikes"], defaults["window"]

    if not sysid.Dataset & {"dataset_id": POPULATION_DATASET}:
        folder = population_folder(size_name, seed)
        if not folder.is_dir():
            _say(
                f"simulating a population: {size.population['n_neurons']} neurons, "
                f"{size.population['n_train']} training images"
            )
            # written aside and renamed, so that an interrupted write is never taken as done
            partial = folder.with_name(folder.name + ".partial")
            simulate_population(partial, seed=seed, overwrite=True, **size.population)
            partial.rename(folder)
        sysid.import_filetree(folder, POPULATION_DATASET, note=f"demo {size_name} seed {seed}")

    dataset_config = params.insert_config(sysid.DatasetConfig, "filetree", size.dataset, note="demo")
    model_keys = {
        name: params.insert_config(sysid.ModelConfig, name, config, note="demo") for name, config in size.models.items()
    }
    trainer_key = params.insert_config(sysid.TrainerConfig, "standard_trainer", size.trainer, note="demo")
    sysid.Seed.insert([{"seed": s} for s in size.seeds], skip_duplicates=True)
    keys = {
        "imaging": imaging_keys,
        "spikes": spike_keys,
        "window": window_key,
        "dataset_config": dataset_config,
        "models": model_keys,
        "trainer": trainer_key,
    }
    if size.video_scan:
        keys["video"] = {
            "window": params.insert_config(sysid.ResponseWindow, "frames", {}, note="demo video"),
            "dataset_config": params.insert_config(
                sysid.DatasetConfig, "video_filetree", size.video_dataset, note="demo"
            ),
            "models": {
                label: params.insert_config(sysid.ModelConfig, "video_latent", config, note=f"demo {label}")
                for label, config in size.video_models.items()
            },
            "trainer": params.insert_config(sysid.TrainerConfig, "standard_trainer", size.video_trainer, note="demo"),
        }
    return keys


def build_scan_dataset(keys: dict) -> dict | None:
    """The scan's trial responses (first spike method) as a dataset, once they exist."""
    from . import sysid

    if sysid.Dataset & {"dataset_id": SCAN_DATASET}:
        return {"dataset_id": SCAN_DATASET}
    restriction = {**DEMO_SCAN, **keys["spikes"][0], **keys["window"]}
    source = sysid.TrialResponses & restriction
    if len(source) != 1:
        return None
    return sysid.dataset_from_responses(source.fetch1("KEY"), SCAN_DATASET, note="demo scan")


def build_video_dataset(keys: dict) -> dict | None:
    """The video scan's per-frame responses (first spike method) as a video dataset, once they exist."""
    from . import sysid

    if "video" not in keys:
        return None
    if sysid.Dataset & {"dataset_id": VIDEO_DATASET}:
        return {"dataset_id": VIDEO_DATASET}
    source = sysid.TrialResponses & {**DEMO_VIDEO_SCAN, **keys["spikes"][0], **keys["video"]["window"]}
    if len(source) != 1:
        return None
    return sysid.dataset_from_responses(source.fetch1("KEY"), VIDEO_DATASET, note="demo video scan")


def scan_restriction(keys: dict) -> list[dict]:
    """Each demo scan with its own response window (images: window means; movies: every frame)."""
    out = [{**DEMO_SCAN, **keys["window"]}]
    if "video" in keys:
        out.append({**DEMO_VIDEO_SCAN, **keys["video"]["window"]})
    return out


def video_model_restriction(keys: dict) -> list[dict]:
    """The demo's video models: every video model config with the video dataset and trainer config."""
    if "video" not in keys:
        return []
    v = keys["video"]
    return [
        {"dataset_id": VIDEO_DATASET, **v["dataset_config"], **v["trainer"], **model} for model in v["models"].values()
    ]


def model_restriction(keys: dict) -> list[dict]:
    """The demo's trained models: every model config with the demo's dataset and trainer config."""
    return [{**keys["dataset_config"], **keys["trainer"], **model} for model in keys["models"].values()]


# ---------------------------------------------------------------------------------------------
# populating
# ---------------------------------------------------------------------------------------------


def populate(tables: list[type], restriction: Any, workers: int, prefix: str) -> list:
    """Populate ``tables`` through the worker loop: in this process, or ``workers`` processes.

    The worker loop is what makes Ctrl-C safe: the current job gets a grace period to finish,
    else it is put back to pending, so a rerun computes it; nothing is left half-written.
    """
    from .workers import WorkerOptions, WorkerProcess

    if workers <= 1:
        options = WorkerOptions(
            restrictions=[restriction], exit_when_idle=True, poll=0.2, progress=True, refresh_interval=0.5, grace=10.0
        )
        worker = WorkerProcess(tables[0].connection, tables, options)
        worker.run()
        if worker.signalled:
            raise KeyboardInterrupt
    else:
        argv = [
            sys.executable,
            "-m",
            "schemas.cli",
            "--prefix",
            prefix,
            "launch",
            "--workers",
            str(workers),
            "--exit-when-idle",
            "--poll",
            "0.5",
            "--tables",
            *[t.__name__ for t in tables],
        ]
        _say(f"populating {', '.join(t.__name__ for t in tables)} with {workers} worker processes")
        if subprocess.run(argv, check=False).returncode in (130, -2):
            raise KeyboardInterrupt
    errors = []
    for table in tables:
        for row in (table.jobs.errors & restriction).to_dicts():
            key = {k: row[k] for k in table.primary_key if k in row}
            errors.append((table.__name__, key, row["error_message"]))
    return errors


# ---------------------------------------------------------------------------------------------
# the summary: what the pipeline found against the simulation's truth
# ---------------------------------------------------------------------------------------------


def summarize(size_name: str, seed: int, keys: dict) -> dict:
    """Cells, spikes and model scores against the simulation's ground truth."""
    from pipeline.imaging.segmentation import match_masks
    from pipeline.simulation.population import oracle_scores
    from pipeline.sysid import metrics

    from . import imaging, spikes, sysid, values

    size = SIZES[size_name]
    truth = simulated_experiment(size, seed)
    summary: dict[str, Any] = {"size": size_name, "seed": seed}

    scan_params = {k: v for step in keys["imaging"].values() for k, v in step.items()}
    traces_key = (imaging.Traces & DEMO_SCAN & scan_params).fetch1("KEY")
    mask_ids, weights = imaging.Segmentation.weights(traces_key, truth.masks.shape[1:])
    found = weights > 0
    match = match_masks(found, truth.masks, min_iou=0.5)
    pairs = [(int(f), int(t)) for f, t in match["pairs"]]
    summary["cells"] = {
        "true": int(truth.masks.shape[0]),
        "found": int(found.shape[0]),
        "matched": len(pairs),
        "recall": float(match["recall"]),
        "precision": float(match["precision"]) if found.shape[0] else 0.0,
    }

    unit_ids = [int(m) for m in mask_ids]
    dff = {u["unit_id"]: np.asarray(u["dff"], np.float64) for u in (imaging.Traces.Unit & traces_key).to_dicts()}
    true_spikes = np.stack([truth.spikes[t] for _, t in pairs], axis=1).astype(np.float64) if pairs else None
    summary["spikes"] = []
    for method_key in keys["spikes"]:
        activity = {
            u["unit_id"]: np.asarray(u["spikes"], np.float64)
            for u in (spikes.Activity.Unit & traces_key & method_key).to_dicts()
        }
        if true_spikes is None or not activity:
            continue
        inferred = np.stack([activity[unit_ids[f]] for f, _ in pairs], axis=1)
        traces = np.stack([dff[unit_ids[f]] for f, _ in pairs], axis=1)
        method = (spikes.SpikeMethod & method_key).fetch1()
        summary["spikes"].append(
            {
                "method": f"{method['builder']} {values.json_value(method['config'])}",
                "median_r_inferred": float(np.median(metrics.pearson(np.nan_to_num(inferred), true_spikes))),
                "median_r_dff": float(np.median(metrics.pearson(np.nan_to_num(traces), true_spikes))),
                "cells": len(pairs),
            }
        )

    summary["models"] = []
    for dataset_id in (POPULATION_DATASET, SCAN_DATASET):
        rows = (
            sysid.Score * sysid.ModelConfig.proj("builder") & {"dataset_id": dataset_id} & model_restriction(keys)
        ).to_dicts()
        if not rows:
            continue
        oracle = None
        if dataset_id == POPULATION_DATASET:
            oracle = oracle_scores(population_folder(size_name, seed))
        summary["models"].append(
            {
                "dataset": dataset_id,
                "oracle": oracle,
                "models": [
                    {k: r[k] for k in ("builder", "seed", "single_trial_correlation", "correlation_to_average", "feve")}
                    for r in sorted(rows, key=lambda r: (r["builder"], r["seed"]))
                ],
            }
        )
    summary["video"] = video_summary(size, seed, keys)
    return summary


def video_summary(size: DemoSize, seed: int, keys: dict) -> list[dict]:
    """Per video model: Score and VideoScore, and the inferred latents against the simulation's latents."""
    from pipeline.sysid import video

    from . import sysid

    out = []
    truth = None
    for label, model_key in (keys.get("video") or {}).get("models", {}).items():
        restriction = {"dataset_id": VIDEO_DATASET, **keys["video"]["dataset_config"], **keys["video"]["trainer"]}
        key = {**restriction, **model_key}
        if not sysid.VideoScore & key or not sysid.Score & key:
            continue
        row = {"label": label, **(sysid.Score & key).fetch1(), **(sysid.VideoScore & key).fetch1()}
        model_row = (sysid.ModelConfig & model_key).fetch1()
        if truth is None:
            truth = simulated_video_scan(size, seed).video
        model, loaders = sysid.load_model(key, device="cpu")
        if getattr(model, "latent_dim", 0):
            scores = video.video_scores(
                model,
                loaders,
                VIDEO_DATASET,
                samples=8,
                seed=int((sysid.TrainedModel & key).fetch1("seed")),
                true_latents=truth.latents,
                latent_kinds=truth.latent_kinds.tolist(),
            )
            row["latent_recovery"] = scores["latent_recovery"]
        row["builder"] = model_row["builder"]
        out.append(row)
    return out


def format_summary(summary: dict) -> str:
    cells = summary["cells"]
    lines = [
        "",
        "Demo summary (against the simulation's ground truth)",
        f"  cells   {cells['found']} found, {cells['true']} true, {cells['matched']} matched at mask IoU >= 0.5: "
        f"recall {cells['recall']:.2f}, precision {cells['precision']:.2f} (ceiling 1.00)",
    ]
    for s in summary["spikes"]:
        lines.append(
            f"  spikes  {s['method']}: median r with the true spikes {s['median_r_inferred']:.3f} over "
            f"{s['cells']} matched cells (the dF/F trace itself: {s['median_r_dff']:.3f}; ceiling 1.00)"
        )
    for group in summary["models"]:
        lines.append(f"  models  on {group['dataset']} (test tier; single-trial r, r to average, FEVE):")
        oracle = group["oracle"]
        for m in group["models"]:
            ratio = (
                f"  {m['correlation_to_average'] / oracle['correlation_to_average']:.2f} of oracle" if oracle else ""
            )
            feve = "  n/a" if m["feve"] is None else f"{m['feve']:.3f}"
            lines.append(
                f"          {m['builder']:<20} seed {m['seed']}  {m['single_trial_correlation']:.3f}  "
                f"{m['correlation_to_average']:.3f}  {feve}{ratio}"
            )
        if oracle:
            lines.append(
                f"          {'oracle (true rates)':<20}         {oracle['single_trial_correlation']:.3f}  "
                f"{oracle['correlation_to_average']:.3f}  {oracle['feve']:.3f}  (knows each trial's behaviour, "
                "so its FEVE can pass 1)"
            )
        else:
            lines.append("          (no oracle: the scan's units are segmented cells, not the simulated neurons)")
    if summary.get("video"):
        lines.append(
            f"  video   on {VIDEO_DATASET} (test tier; per-frame r, r to average; log-likelihood per neuron and frame; "
            "the held-out half of the cells from the prior -> given the other half):"
        )
        for m in summary["video"]:
            lines.append(
                f"          {m['label']:<20} {m['single_trial_correlation']:.3f}  {m['correlation_to_average']:.3f}  "
                f"LL {m['log_likelihood']:.3f}  held-out {m['log_likelihood_unobserved']:.3f} -> "
                f"{m['log_likelihood_conditioned']:.3f}"
            )
            if m.get("latent_recovery"):
                recovered = ", ".join(f"{r['kind']} {r['r']:.2f}" for r in m["latent_recovery"])
                lines.append(f"          {'':<20} inferred latents vs the true ones (r): {recovered}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------


def run_demo(prefix: str | None = None, *, size: str = "full", seed: int = 0, workers: int = 1) -> dict:
    """Run the whole demo (idempotent) and return its summary."""
    import torch

    import schemas

    from . import imaging, spikes, sysid

    if workers <= 1:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    started = time.perf_counter()
    prefix = schemas.activate(prefix)
    _say(f"schemas activated with prefix {prefix!r}")
    keys = register_inputs(size, seed)

    scan_tables = [
        imaging.ScanInfo,
        imaging.MotionCorrection,
        imaging.Denoised,
        imaging.Segmentation,
        imaging.Traces,
        spikes.Activity,
        sysid.TrialResponses,
    ]
    errors = populate(scan_tables, scan_restriction(keys), workers, prefix)
    build_scan_dataset(keys)
    build_video_dataset(keys)
    errors += populate([sysid.TrainedModel, sysid.Score], model_restriction(keys), workers, prefix)
    if video_model_restriction(keys):
        errors += populate(
            [sysid.TrainedModel, sysid.Score, sysid.VideoScore], video_model_restriction(keys), workers, prefix
        )
    for table, key, message in errors:
        _say(f"error in {table} {key}: {message}")

    summary = summarize(size, seed, keys)
    summary["seconds"] = time.perf_counter() - started
    summary["errors"] = len(errors)
    print(format_summary(summary))
    print(
        f"\n[demo] done in {summary['seconds']:.0f} s; {len(errors)} job error(s). "
        f"`pipeline status` shows every table; notebooks/ explore the results.",
        flush=True,
    )
    return summary


def simulation_of_scan(key: dict):
    """The simulated experiment behind a demo scan (its ground truth), or None for a recorded scan.

    A demo scan's note says which simulation made it (``demo <size> seed <seed>``).
    """
    import re

    from . import imaging

    note = (imaging.Scan & key).fetch1("note")
    found = re.fullmatch(r"demo (\w+) seed (\d+)", note or "")
    if not found or found.group(1) not in SIZES:
        return None
    size, seed = SIZES[found.group(1)], int(found.group(2))
    scan = {k: int(key[k]) for k in DEMO_VIDEO_SCAN}
    return simulated_video_scan(size, seed) if scan == DEMO_VIDEO_SCAN else simulated_experiment(size, seed)


def oracle_of_dataset(dataset_id: str) -> dict | None:
    """The oracle scores (noiseless rates) of a demo population dataset, or None for any other dataset."""
    import re

    from pipeline.simulation.population import oracle_scores

    from . import sysid

    note = (sysid.Dataset & {"dataset_id": dataset_id}).fetch1("note")
    found = re.fullmatch(r"demo (\w+) seed (\d+)", note or "")
    if dataset_id != POPULATION_DATASET or not found or found.group(1) not in SIZES:
        return None
    return oracle_scores(population_folder(found.group(1), int(found.group(2))))
