"""Video models on a held-out simulated video population: video-only vs latent model.

Simulates a population watching natural movies with latent state (``pipeline.simulation.video``:
two latents drive running and pupil, two are hidden), writes it in the video FileTree layout,
trains every model through ``pipeline.sysid.fitting.fit`` (the code path of ``TrainedModel``)
with ``standard_trainer`` and scores the test tier (movies shown in repeats, latent state new on
every repeat):

- per-frame single-trial correlation and correlation to the average over repeats (``Score``);
- for the zero-inflated-gamma models (``video_latent``, ``latent_dim = 0`` is the video-only
  one): log-likelihood per neuron and frame, over all neurons and over a held-out half, and
  of that half conditioned on the other half's responses; the held-out half's per-frame
  correlation with the latents at their posterior mean;
- latent recovery: correlation of the best linear read-out of the inferred latents (fitted on
  validation trials) with each true latent and with the behaviour, on the test trials.

Time per epoch has a reference beside it: one epoch of the static ``cnn_gaussian`` model on the
same training frames shown as images (same machine, same process).

    nice python benchmarks/video.py --json video.json
    nice python benchmarks/video.py --neurons 60 --train 80 --max-epochs 2   # quick look
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
from pipeline.simulation.video import simulate_video  # noqa: E402
from pipeline.sysid import data, fitting, metrics, video  # noqa: E402

MODELS = {
    "video_poisson": ("video_gaussian", {}),
    "video_only_zig": ("video_latent", {"latent_dim": 0}),
    "latent_zig": ("video_latent", {"latent_dim": 4}),
    # trained without behaviour (no modulator, no shifter): do its latents find running and pupil?
    "latent_no_behavior": ("video_latent", {"latent_dim": 4, "modulator": False, "shifter": False}),
}


def _static_reference(tree: video.VideoTree, folder: Path, seed: int) -> float:
    """Seconds of one epoch of cnn_gaussian on the training frames as images (same core width)."""
    train = tree.tiers == "train"
    frames = tree.videos[train].reshape(-1, 1, *tree.frame_shape)
    responses = tree.responses[train].reshape(-1, tree.n_neurons)
    n = len(frames)
    tiers = np.array(["train"] * n, dtype="<U10")
    tiers[-max(n // 10, 20) :] = "validation"
    static = data.FileTree(
        images=frames,
        responses=responses,
        tiers=tiers,
        image_ids=np.arange(n),
        trial_idx=np.arange(n),
        neurons={"unit_ids": tree.unit_ids},
    )
    path = data.write_filetree(folder / "static_frames", static)
    loaders_fn = identity.resolve("dataset", "filetree")
    fit = fitting.fit(
        loaders_fn,
        {"paths": [str(path)], "batch_size": 64},
        identity.resolve("model", "cnn_gaussian"),
        {"hidden_channels": 16, "layers": 3, "input_kernel": 7, "hidden_kernel": 3},
        identity.resolve("trainer", "standard_trainer"),
        {"max_epochs": 1},
        seed,
    )
    return float(fit.output["seconds_per_epoch"]), int((tiers == "train").sum())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--neurons", type=int, default=100)
    parser.add_argument("--train", type=int, default=120, help="train trials (distinct movies)")
    parser.add_argument("--frames", type=int, default=60, help="frames per trial (30 Hz)")
    parser.add_argument("--max-epochs", type=int, default=15)
    parser.add_argument("--samples", type=int, default=32, help="Monte-Carlo draws of the latents per likelihood")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true", help="skip the static reference epoch")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    experiment = simulate_video(args.seed, n_neurons=args.neurons, n_train=args.train, frames=args.frames)
    tree = experiment.filetree()
    result: dict = {
        "population": {
            "neurons": args.neurons,
            "trials": {t: int((tree.tiers == t).sum()) for t in ("train", "validation", "test")},
            "frames": args.frames,
            "frame_shape": list(tree.frame_shape),
            "latent_kinds": experiment.latent_kinds.tolist(),
            "simulate_seconds": time.perf_counter() - started,
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = video.write_video_filetree(Path(tmp) / "video_population", tree)
        dataset_config = {"paths": [str(folder)], "data_keys": ["video_population"]}
        dataset_fn = identity.resolve("dataset", "video_filetree")
        loaders = dataset_fn(args.seed, **dataset_config)
        test = loaders["test"]["video_population"]
        # the oracle: the true rates of the test frames
        rates = experiment.rates[np.concatenate([b["trial_idx"].numpy() for b in test])]
        responses, _, ids = metrics.predict(_Zeros(args.neurons), test, "video_population")
        oracle = metrics.test_scores(responses, rates.reshape(responses.shape), ids)
        result["oracle"] = {k: oracle[k] for k in ("single_trial_correlation", "correlation_to_average")}

        for label in args.models:
            builder, config = MODELS[label]
            fit = fitting.fit(
                dataset_fn,
                dataset_config,
                identity.resolve("model", builder),
                config,
                identity.resolve("trainer", "standard_trainer"),
                {"max_epochs": args.max_epochs, "lr": 5e-3},
                args.seed,
            )
            model, built = fitting.rebuild(
                dataset_fn,
                dataset_config,
                identity.resolve("model", builder),
                config,
                args.seed,
                fitting.state_dict_bytes(fit.state_dict),
                device="cpu",
            )
            scores = fitting.evaluate(model, built, "test")["video_population"]
            row = {
                "builder": builder,
                "config": config,
                "epochs": fit.output["epochs"],
                "seconds_per_epoch": fit.output["seconds_per_epoch"],
                "train_seconds": fit.provenance.get("wall_time", float("nan")),
                "single_trial_correlation": scores["single_trial_correlation"],
                "correlation_to_average": scores["correlation_to_average"],
            }
            if builder == "video_latent":
                row.update(
                    video.video_scores(
                        model,
                        built,
                        "video_population",
                        samples=args.samples,
                        seed=args.seed,
                        true_latents=experiment.latents,
                        latent_kinds=experiment.latent_kinds.tolist(),
                    )
                )
            result["models"][label] = row
            print(f"{label}: {row['epochs']} epochs, {row['seconds_per_epoch']:.1f} s/epoch", flush=True)
        if not args.no_reference:
            seconds, n_images = _static_reference(tree, Path(tmp), args.seed)
            result["static_reference"] = {
                "model": "cnn_gaussian (16 channels, 3 layers)",
                "seconds_per_epoch": seconds,
                "images": n_images,
            }
    _report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))
    return result


class _Zeros(torch.nn.Module):
    """A stand-in model for ``metrics.predict`` that predicts zeros (to collect responses and ids)."""

    def __init__(self, n_neurons: int):
        super().__init__()
        self.n_neurons = n_neurons
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, videos, data_key=None, **_):
        return torch.zeros(videos.shape[0], videos.shape[2], self.n_neurons)


def _report(result: dict) -> None:
    p = result["population"]
    print()
    print(
        f"held-out test: {p['trials']['test']} trials of {p['frames']} frames ({p['neurons']} neurons, "
        f"{p['trials']['train']} train trials); latents {p['latent_kinds']}"
    )
    o = result["oracle"]
    header = f"{'model':<20}{'corr':>7}{'corr avg':>9}{'LL':>8}{'LL held':>9}{'LL cond':>9}{'r cond':>8}{'s/epoch':>9}"
    print(header)
    print("-" * len(header))
    print(f"{'oracle (rates)':<20}{o['single_trial_correlation']:>7.3f}{o['correlation_to_average']:>9.3f}")
    for label, m in result["models"].items():
        ll = [m.get(k) for k in ("log_likelihood", "log_likelihood_unobserved", "log_likelihood_conditioned")]
        cells = "".join(f"{v:>9.3f}" if v is not None else f"{'':>9}" for v in ll)
        rc = m.get("conditioned_correlation")
        rc = "" if rc is None else f"{rc:.3f}"
        print(
            f"{label:<20}{m['single_trial_correlation']:>7.3f}{m['correlation_to_average']:>9.3f}{cells[1:]}"
            f"{rc:>8}{m['seconds_per_epoch']:>9.1f}"
        )
    if "static_reference" in result:
        s = result["static_reference"]
        print(
            f"reference: {s['model']}, one epoch on the {s['images']} training frames as images: {s['seconds_per_epoch']:.1f} s"
        )
    for label, m in result["models"].items():
        if "latent_recovery" in m:
            rec = ", ".join(f"{r['kind']} {r['r']:.2f}" for r in m["latent_recovery"])
            beh = ", ".join(f"{k} {v:.2f}" for k, v in m.get("behavior_correlation", {}).items())
            print(f"{label}: latent recovery (r of a linear read-out): {rec}; behaviour: {beh}")
    print("(LL: nats per neuron and frame of the normalized responses; held: the held-out half from the prior;")
    print(" cond: the held-out half given the other half's responses)")


if __name__ == "__main__":
    main()
