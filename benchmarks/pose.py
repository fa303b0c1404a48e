"""Pose models on held-out synthetic sequences: calibration (cGNF vs minMPJPE), jitter (sequences vs frames).

Trains every model on simulated stick-figure sequences (3D ground truth; the diffusion models
see only the 3D motion), samples hypotheses for held-out sequences from their 2D keypoints
and scores them: MPJPE of the mean and minMPJPE over the hypotheses (mm, root excluded),
expected calibration error of the per-joint distributions, over all and over occluded
joints, pooled over every test frame, and jitter (mm/frame^2, within each test clip).

    nice python benchmarks/pose.py --json pose.json
    nice python benchmarks/pose.py --models cgnf min_mpjpe --steps-scale 0.3   # quick look

Default sizes fit a 2-core machine shared with others (one torch thread, about 20 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.behavior import data, estimators, metrics  # noqa: E402

# label: (builder, config); steps are scaled by --steps-scale
MODELS = {
    "cgnf": ("cgnf", {"steps": 9000}),
    "min_mpjpe": ("min_mpjpe", {"steps": 9000}),
    "diffusion_sequence": ("motion_diffusion", {"frames": 16, "steps": 2000}),
    "diffusion_per_frame": ("motion_diffusion", {"frames": 1, "steps": 2000}),
}


def evaluate(model: estimators.PoseModel, test: data.PoseData) -> dict:
    """Scores pooled over every test frame (calibration needs many independent poses)."""
    started = time.perf_counter()
    samples = np.stack(
        [model.sample(test.keypoints[s], test.confidence[s], seed=s) for s in range(len(test.keypoints))], 1
    )
    sample_time = time.perf_counter() - started
    N, S, F = samples.shape[:3]
    pooled = samples.reshape(N, S * F, -1, 3)[..., 1:, :] * 1000  # mm, root excluded
    truth = test.poses.reshape(S * F, -1, 3)[..., 1:, :] * 1000
    occluded = test.occluded.reshape(S * F, -1)[..., 1:]
    return {
        "mpjpe_mean": metrics.mean_mpjpe(pooled, truth),
        "min_mpjpe": metrics.min_mpjpe(pooled, truth),
        "ece": metrics.expected_calibration_error(pooled, truth),
        "ece_occluded": metrics.expected_calibration_error(pooled, truth, occluded),
        "jitter": metrics.jitter(samples[..., 1:, :] * 1000),
        "calibration_curve": np.nanmean(metrics.calibration_curve(pooled, truth), 0).tolist(),
        "calibration_curve_occluded": np.nanmean(metrics.calibration_curve(pooled, truth, occluded), 0).tolist(),
        # the model's own first hypothesis as the truth: calibrated by construction where the hypotheses are
        # independent draws (not for min_mpjpe), so this is the error that finite test data alone leaves
        "ece_self": metrics.expected_calibration_error(pooled[1:], pooled[0]),
        "ece_self_occluded": metrics.expected_calibration_error(pooled[1:], pooled[0], occluded),
        "sample_seconds": sample_time,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--train-sequences", type=int, default=3000)
    parser.add_argument("--train-frames", type=int, default=32)
    parser.add_argument("--test-sequences", type=int, default=200)
    parser.add_argument("--test-frames", type=int, default=16, help="frames per test clip (the diffusion window)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every model's training steps")
    parser.add_argument("--guidance-scale", type=float, help="override the diffusion models' guidance scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    train = data.synthetic_skeleton(n_sequences=args.train_sequences, n_frames=args.train_frames, seed=args.seed)
    # held out: another seed of the simulation, never seen in training
    test = data.simulate(args.test_sequences, args.test_frames, seed=args.seed + 1000)
    result = {
        "train": {"sequences": args.train_sequences, "frames": args.train_frames},
        "test": {
            "sequences": args.test_sequences,
            "frames": args.test_frames,
            "occluded_fraction": float(test.occluded[..., 1:].mean()),
            "jitter_truth": metrics.jitter(test.poses[..., 1:, :] * 1000),
        },
        "models": {},
    }
    for label in args.models:
        builder, config = MODELS[label]
        config = {**config, "steps": max(1, int(round(config["steps"] * args.steps_scale)))}
        if builder == "motion_diffusion" and args.guidance_scale is not None:
            config["guidance_scale"] = args.guidance_scale
        fit = estimators.train(builder, config, train, seed=args.seed)
        scores = evaluate(fit.model, test)
        result["models"][label] = {
            "builder": builder,
            "config": config,
            "train_seconds": fit.wall_time,
            "final_loss": fit.history["final_loss"],
            **scores,
        }
        print(f"{label}: trained in {fit.wall_time:.0f} s, sampled in {scores['sample_seconds']:.0f} s", flush=True)

    print()
    print(
        f"held-out: {args.test_sequences} clips x {args.test_frames} frames, "
        f"{100 * result['test']['occluded_fraction']:.1f}% of joints occluded, "
        f"true jitter {result['test']['jitter_truth']:.2f} mm/frame^2; 20 hypotheses per frame"
    )
    header = f"{'model':<22}{'MPJPE mean':>11}{'minMPJPE':>10}{'ECE':>8}{'ECE occl.':>10}{'jitter':>9}{'train s':>9}"
    print(header)
    print("-" * len(header))
    for label, m in result["models"].items():
        print(
            f"{label:<22}{m['mpjpe_mean']:>11.1f}{m['min_mpjpe']:>10.1f}{m['ece']:>8.3f}"
            f"{m['ece_occluded']:>10.3f}{m['jitter']:>9.2f}{m['train_seconds']:>9.0f}"
        )
    print("(MPJPE in mm, root excluded; ECE pooled over all test frames; jitter in mm/frame^2 within clips)")
    if "cgnf" in result["models"]:
        m = result["models"]["cgnf"]
        print(
            f"a calibrated model's ECE on this test set, from finite data alone: {m['ece_self']:.3f} "
            f"({m['ece_self_occluded']:.3f} occluded; cgnf's own first sample as the truth)"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
