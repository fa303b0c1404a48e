"""Benchmark of the digital-twin methods on a simulated population with ground truth.

1. K-shot: a neural process trained on 80% of the neurons predicts the other 20% from K of
   their trials (one forward pass), beside a factorized readout fitted on the same K trials
   over its frozen core; test correlation to average vs K, time per neuron, oracle.
2. Divisive normalization: the Burg-style model with and without divisive normalization, on
   neurons with ground-truth normalization pools and on the others.
3. In-silico experiments on the trained DN model: MEI vs the true filter (correlation) and
   the grating-tuning preferred orientation vs the true one (degrees); the same experiments
   on the ground-truth neurons themselves as a check of the method.

    nice python benchmarks/twins.py --json twins.json --figures twins_figures
    nice python benchmarks/twins.py --parts kshot     # the K-shot curve alone (about 7 minutes)

Default sizes fit a 2-core machine shared with others (about 12 minutes there): 120 neurons
(half with normalization pools, simple cells), 3000 train images of 18 x 32 pixels, a test
tier of 50 images x 10 repeats; the models train until early stopping (at most --epochs,
--np-epochs). Times per neuron are each method's time for all held-out neurons together
divided by their number; the work on the K images alone (the core's pass, the neural
process's feature statistics) is done once for all of them and printed apart.
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

from pipeline import identity, insilico  # noqa: E402
from pipeline.simulation.neurons import receptive_fields  # noqa: E402
from pipeline.simulation.population import ground_truth, simulate_population  # noqa: E402
from pipeline.sysid import fitting, kshot, metrics  # noqa: E402

KS = [10, 30, 100, 300, 1000, kshot.ALL]
PARTS = ("kshot", "dn", "insilico")
# the DN model, the same model without the divisive normalization, and the control with as many
# readout features whose second half is scaled by a learned constant instead of divided by a pool
DN_VARIANTS = (("with DN", True, True), ("without DN", False, True), ("DN, no pool", True, False))


def _fit(
    folder: Path,
    builder: str,
    config: dict,
    trainer: str,
    trainer_config: dict,
    seed: int,
    neuron_ids: list[int] | None = None,
    batch_size: int = 64,
):
    dataset = {"paths": [str(folder)], "data_keys": ["sim"], "batch_size": batch_size, "neuron_ids": neuron_ids}
    started = time.perf_counter()
    result = fitting.fit(
        identity.resolve("dataset", "filetree"),
        dataset,
        identity.resolve("model", builder),
        config,
        identity.resolve("trainer", trainer),
        trainer_config,
        seed,
    )
    model, loaders = fitting.rebuild(
        identity.resolve("dataset", "filetree"),
        dataset,
        identity.resolve("model", builder),
        config,
        seed,
        fitting.state_dict_bytes(result.state_dict),
        "cpu",
    )
    return model, loaders, result, time.perf_counter() - started


def _oracle(folder: Path) -> np.ndarray:
    from pipeline.sysid.data import read_filetree

    tree = read_filetree(folder)
    test = tree.tiers == "test"
    rates = tree.meta["ground_truth/rates"]
    return metrics.correlation_to_average(tree.responses[test], rates[test], tree.image_ids[test])


def divisive_normalization(folder: Path, neurons, oracle: np.ndarray, args) -> dict:
    out = {}
    pooled = neurons.normalized
    for label, normalize, pool in DN_VARIANTS:
        config = {"hidden_channels": args.channels, "normalize": normalize, "pool": pool}
        model, loaders, result, seconds = _fit(
            folder,
            "divisive_normalization",
            config,
            "standard_trainer",
            {"max_epochs": args.epochs, "patience": 3, "lr_decay_steps": 2},
            args.seed,
        )
        scores = fitting.evaluate(model, loaders)["sim"]
        unit = scores["unit_correlation_to_average"]
        out[label] = {
            "pooled": float(unit[pooled].mean()),
            "others": float(unit[~pooled].mean()),
            "all": float(unit.mean()),
            "epochs": result.output["epochs"],
            "seconds": seconds,
            "unit_correlation_to_average": unit.tolist(),
        }
        if normalize and pool:
            out["model"] = model
            out["loaders"] = loaders
    out["oracle"] = {"pooled": float(oracle[pooled].mean()), "others": float(oracle[~pooled].mean())}
    out["n_pooled"] = int(pooled.sum())
    return out


def kshot_curve(folder: Path, oracle: np.ndarray, args) -> dict:
    n = args.neurons
    trained_ids = list(range(1, int(round(0.8 * n)) + 1))
    heldout = np.arange(len(trained_ids), n)  # columns of the held-out units
    config = {"hidden_channels": args.channels, "layers": 2}
    model, _, result, seconds = _fit(
        folder,
        "neural_process",
        config,
        "neural_process_trainer",
        {"max_epochs": args.np_epochs, "patience": 4},
        args.seed,
        neuron_ids=trained_ids,
        batch_size=128,
    )
    every = identity.resolve("dataset", "filetree")(args.seed, paths=[str(folder)], data_keys=["sim"], batch_size=256)
    context = kshot.loader_arrays(every["train"]["sim"], heldout)
    test = kshot.loader_arrays(every["test"]["sim"], heldout)
    points = kshot.kshot_curve(model, context, test, args.seed, ks=KS, repeats=1)
    return {
        "trained_units": len(trained_ids),
        "heldout_units": int(len(heldout)),
        "train_seconds": seconds,
        "validation_correlation": result.score,
        "oracle": float(oracle[heldout].mean()),
        "points": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in p.items()} for p in points],
    }


def in_silico(model, loaders, neurons, args) -> dict:
    train = loaders["train"]["sim"]
    shape = tuple(next(iter(train))["images"].shape[1:])
    respond = insilico.response_function(model, "sim", insilico.mean_behavior(train))
    started = time.perf_counter()
    mei = insilico.mei_experiment(respond, shape, len(neurons), args.seed, steps=args.mei_steps)
    tuning = insilico.grating_tuning_experiment(respond, shape, len(neurons), args.seed)
    seconds = time.perf_counter() - started
    filters = receptive_fields(neurons)
    pairs = np.where(neurons.complex[:, None, None, None], filters, filters[:, :1].repeat(2, axis=1))
    mei_r = np.array(
        [
            insilico.filter_correlation(mei["meis"][i : i + 1], pairs[i : i + 1, : 2 if neurons.complex[i] else 1])[0]
            for i in range(len(neurons))
        ]
    )
    error = insilico.orientation_error(tuning["preferred_orientation"], neurons.orientation)

    # the method on the truth itself: grating tuning of the ground-truth neurons
    from pipeline.simulation.neurons import IMAGE_MEAN, neuron_rates

    stats = train.dataset.statistics

    def true_response(images: torch.Tensor) -> torch.Tensor:
        raw = images[:, 0].numpy() * stats["images_std"] + stats["images_mean"]
        return torch.from_numpy(neuron_rates(neurons, raw)).float()

    truth = insilico.grating_tuning_experiment(
        true_response, shape, len(neurons), args.seed, amplitude=IMAGE_MEAN * 0.5 / stats["images_std"]
    )
    truth_error = insilico.orientation_error(truth["preferred_orientation"], neurons.orientation)
    return {
        "mei_filter_correlation_median": float(np.median(mei_r)),
        "orientation_error_median_degrees": float(np.median(error)),
        "truth_orientation_error_median_degrees": float(np.median(truth_error)),
        "seconds": seconds,
        "unit_mei_filter_correlation": mei_r.tolist(),
        "unit_orientation_error": error.tolist(),
        "arrays": {
            "meis": mei["meis"],
            "filters": filters[:, 0],
            "curves": tuning["curves"],
            "orientations": tuning["orientations"],
        },
    }


def figures(directory: Path, silico: dict, curve: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    a = silico["arrays"]
    order = np.argsort(silico["unit_mei_filter_correlation"])[::-1][:6]
    fig, axes = plt.subplots(2, 6, figsize=(12, 3))
    for j, i in enumerate(order):
        axes[0, j].imshow(a["meis"][i, 0], cmap="gray")
        axes[0, j].set_title(f"MEI {i}", fontsize=8)
        axes[1, j].imshow(a["filters"][i], cmap="gray")
        axes[1, j].set_title("true filter", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.savefig(directory / "meis.png", dpi=100, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method in ("neural_process", "fitted_readout"):
        pts = [p for p in curve["points"] if p["method"] == method]
        ax.plot([p["k"] for p in pts], [p["correlation_to_average"] for p in pts], "o-", label=method)
    ax.axhline(curve["oracle"], color="k", ls="--", label="oracle")
    ax.set_xscale("log")
    ax.set_xlabel("K (trials of the new neuron)")
    ax.set_ylabel("test correlation to average")
    ax.legend()
    fig.savefig(directory / "kshot.png", dpi=100, bbox_inches="tight")
    plt.close("all")
    return ["meis.png", "kshot.png"]


def print_kshot(curve: dict) -> None:
    print(
        f"\nK-shot prediction of {curve['heldout_units']} held-out neurons (neural process trained on "
        f"{curve['trained_units']}; test correlation to average, oracle {curve['oracle']:.3f})"
    )
    print(
        f"  {'K':>6}  {'neural process':>15}  {'fitted readout':>15}  {'NP s/neuron':>12}  {'fit s/neuron':>12}  "
        f"{'speed-up':>8}  {'shared s: NP':>12}  {'fit':>9}"
    )
    by_k = {}
    for p in curve["points"]:
        by_k.setdefault(p["k_request"], {})[p["method"]] = p
    for pair in by_k.values():
        a, b = pair["neural_process"], pair["fitted_readout"]
        print(
            f"  {a['k']:>6}  {a['correlation_to_average']:>15.3f}  {b['correlation_to_average']:>15.3f}  "
            f"{a['seconds_per_neuron']:>12.2e}  {b['seconds_per_neuron']:>12.2e}  "
            f"{b['seconds_per_neuron'] / a['seconds_per_neuron']:>7.0f}x  {a['shared_seconds']:>12.2e}  {b['shared_seconds']:>9.2e}"
        )
    print(
        "  (s/neuron: each method's time for all held-out neurons together / their number, the fastest of at least\n"
        "   3 calls; shared s: its work on the K images alone, done once for every neuron that saw them: the\n"
        "   core's pass, and for the neural process also the features' statistics)"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--neurons", type=int, default=120)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test-images", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--height", type=int, default=18)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--complex-fraction", type=float, default=0.0)
    parser.add_argument("--normalized-fraction", type=float, default=0.5)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=30, help="most epochs of the DN models (early stopping)")
    parser.add_argument("--np-epochs", type=int, default=20, help="most epochs of the neural process (early stopping)")
    parser.add_argument("--mei-steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dataset", type=Path, default=None, help="reuse a simulated folder")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="what to run (in-silico experiments run on the divisive-normalization model, so 'insilico' needs 'dn')",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--figures", type=Path, default=None)
    args = parser.parse_args(argv)
    if "insilico" in args.parts and "dn" not in args.parts:
        parser.error("--parts insilico runs on the divisive-normalization model: add dn")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dataset
        if folder is None or not folder.is_dir():
            folder = simulate_population(
                folder or Path(tmp) / "population",
                n_neurons=args.neurons,
                n_train=args.train,
                n_test_images=args.test_images,
                repeats=args.repeats,
                seed=args.seed,
                height=args.height,
                width=args.width,
                complex_fraction=args.complex_fraction,
                normalized_fraction=args.normalized_fraction,
                with_behavior=False,
                overwrite=True,
            )
        _, neurons = ground_truth(folder)
        oracle = _oracle(folder)
        dn = silico = curve = None
        if "dn" in args.parts:
            dn = divisive_normalization(folder, neurons, oracle, args)
            model, loaders = dn.pop("model"), dn.pop("loaders")
            if "insilico" in args.parts:
                silico = in_silico(model, loaders, neurons, args)
        if "kshot" in args.parts:
            curve = kshot_curve(folder, oracle, args)

    if curve is not None:
        print_kshot(curve)
    if dn is not None:
        print(
            f"\nDivisive normalization ({dn['n_pooled']} of {args.neurons} neurons with pools; correlation to average)"
        )
        print(f"  {'model':<12}{'pooled':>8}{'others':>8}{'all':>8}")
        for label, _, _ in DN_VARIANTS:
            r = dn[label]
            print(f"  {label:<12}{r['pooled']:>8.3f}{r['others']:>8.3f}{r['all']:>8.3f}")
        print(f"  {'oracle':<12}{dn['oracle']['pooled']:>8.3f}{dn['oracle']['others']:>8.3f}")
    if silico is not None:
        print("\nIn-silico experiments on the DN model (against the simulation's ground truth)")
        print(f"  MEI vs true filter, median correlation      {silico['mei_filter_correlation_median']:.3f}")
        print(f"  preferred orientation error, median         {silico['orientation_error_median_degrees']:.1f} deg")
        print(
            f"  same tuning experiment on the true neurons  {silico['truth_orientation_error_median_degrees']:.1f} deg"
        )

    report = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "kshot": curve,
        "divisive_normalization": dn,
        "in_silico": None if silico is None else {k: v for k, v in silico.items() if k != "arrays"},
    }
    if args.figures is not None and silico is not None and curve is not None:
        report["figures"] = figures(args.figures, silico, curve)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
