"""Spike inference benchmark: spikefinder correlation under leave-one-dataset-out cross-validation.

Reads the ground truth in ../shared/data (spikefinder CSVs with calcium, CASCADE .mat files),
then for every held-out group of datasets trains the supervised network on all the others and
scores, per cell, the supervised network, AR(1) and AR(2) deconvolution, and oasis-deconv's
AR(1) (run in its own virtualenv, ``--oasis-python``) on the same traces, with run times.
Recordings not at 100 Hz are scored after resampling prediction and truth to 10 ms bins.

    python benchmarks/spikes.py --json spikes.json
    python benchmarks/spikes.py --eval-dir DIR     # train on everything, score DIR's cells
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.spikes import infer_spikes, read_cascade, read_spikefinder, spikefinder_correlation, train_spike_model  # noqa: E402
from pipeline.spikes.resampling import to_100hz  # noqa: E402
from pipeline.spikes.supervised import calibrate_timing, trace_noise  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DEFAULT_OASIS = ROOT.parent / "peers" / "oasis" / "bin" / "python"
# datasets that record the same cells are held out together
SAME_CELLS = {"spikefinder-6": "GCaMP5k", "DS17-GCaMP5k-m-V1": "GCaMP5k"}
# --cv mirror: the data here that stands in for each kept-aside spikefinder test dataset, by
# indicator and area (Berens et al. 2018). Test datasets 1 and 3 have no training calcium here:
# a preparation never trained on or calibrated, mirrored by leaving a like dataset out. Test
# datasets 4 and 5 have their training cells here to calibrate on: mirrored by half of those
# cells held out while the other half calibrates (the preparation not trained on).
MIRRORS = {
    "test-1": "DS01-OGB1-m-V1",  # OGB-1, mouse V1
    "test-3": "spikefinder-5",  # GCaMP6s, mouse V1
    "test-4": "spikefinder-4",  # OGB-1, retina: itself
    "test-5": "spikefinder-5",  # GCaMP6s, mouse V1: itself
}


def load_ground_truth(data: Path) -> list:
    """Every recording with calcium and spikes under ``data``."""
    recordings = []
    for calcium in sorted((data / "spikefinder" / "train").glob("*.train.calcium.csv")):
        n = calcium.name.split(".")[0]
        recordings += read_spikefinder(calcium, calcium.with_name(f"{n}.train.spikes.csv"), dataset=f"spikefinder-{n}")
    for folder in sorted((data / "cascade").glob("DS*")):
        for mat in sorted(folder.glob("*.mat")):
            recordings += read_cascade(mat, dataset=folder.name)
    return recordings


def score(prediction: np.ndarray, recording) -> float:
    return float(
        spikefinder_correlation(to_100hz(prediction, recording.fps), to_100hz(recording.spikes, recording.fps))
    )


def run_oasis(recordings, python: Path) -> tuple[list, list]:
    """oasis-deconv AR(1) spikes and seconds per recording (NaN samples left out, as ours)."""
    with tempfile.TemporaryDirectory() as folder:
        inputs = {f"trace_{i}": r.calcium[~np.isnan(r.calcium)].astype(np.float64) for i, r in enumerate(recordings)}
        np.savez(Path(folder) / "in.npz", **inputs)
        subprocess.run(
            [str(python), str(ROOT / "benchmarks" / "spikes_oasis_peer.py"), f"{folder}/in.npz", f"{folder}/out.npz"],
            check=True,
        )
        out = np.load(Path(folder) / "out.npz")
        spikes, seconds = [], []
        for i, r in enumerate(recordings):
            full = np.full(r.calcium.shape, np.nan)
            full[~np.isnan(r.calcium)] = out[f"spikes_{i}"]
            spikes.append(full)
            seconds.append(float(out[f"seconds_{i}"]))
    return spikes, seconds


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def train_models(recordings, params: dict, ensemble: int) -> list:
    """``ensemble`` networks trained with seeds ``seed``, ``seed + 1``, ..."""
    return [train_spike_model(recordings, **{**params, "seed": params["seed"] + k}) for k in range(ensemble)]


def supervised(recording, models: list) -> np.ndarray:
    """The mean of the ensemble's inferred spikes."""
    return np.mean([infer_spikes(recording.calcium[None], recording.fps, "supervised", m)[0] for m in models], axis=0)


def our_methods(recording, model) -> dict:
    """{method: (spikes, seconds)} for one recording."""
    out = {
        "deconvolution-ar1": timed(lambda: infer_spikes(recording.calcium[None], recording.fps, order=1)[0]),
        "deconvolution-ar2": timed(lambda: infer_spikes(recording.calcium[None], recording.fps, order=2)[0]),
    }
    if model is not None:
        out["supervised"] = timed(lambda: supervised(recording, model))
    return out


def same_cells(recording, targets: list) -> bool:
    """Whether ``recording`` belongs to another dataset that records the cells of ``targets``
    (it would leak them into training: spikefinder-6 and DS17 are the same cells)."""
    group = SAME_CELLS.get(recording.dataset)
    return group is not None and any(
        SAME_CELLS.get(t.dataset) == group and t.dataset != recording.dataset for t in targets
    )


def specialize(params: dict, targets: list, train: list, dataset: str | None, focus: float, match_noise: bool) -> dict:
    """Training parameters of a model for the recordings ``targets`` (calcium only is used):
    ``focus`` of the windows from ``dataset`` (their preparation's training cells) where the
    training set has it, and noise matched to the targets' median noise level."""
    out = dict(params)
    if focus and dataset in {r.dataset for r in train}:
        out["focus"] = {dataset: focus}
    if match_noise:
        out["noise_level"] = float(np.median([trace_noise(r.calcium, r.fps, out.get("rate", 25.0)) for r in targets]))
    return out


def own_preparation(test: str) -> str:
    """The training dataset of a spikefinder test dataset's own preparation: spikefinder-N for test-N."""
    return "spikefinder-" + test.removeprefix("test-")


def timing(models: list) -> dict:
    """The calibrated ``shift`` and ``blur`` (s) of each model, for the result JSON."""
    return {k: [m.config.get(k, 0.0) for m in models] for k in ("shift", "blur")}


def calibrated(models: list, own: list) -> list:
    """The models with their output shifted and smoothed to match ``own`` (training cells of the
    target's preparation), as ``train_spike_model(calibrate=...)`` does; unchanged without any."""
    if not own:
        return models
    return [m.with_config(**calibrate_timing(m, own)) for m in models]


def cross_validate(
    recordings,
    params: dict,
    oasis_python: Path | None,
    folds=None,
    ensemble: int = 1,
    focus=0.0,
    match_noise=False,
    calibrate=True,
    unseen=False,
) -> dict:
    """Scores of every held-out cell of ``folds``: ``(group, held indices)`` or ``(group, held,
    label)``, the label naming the cells' dataset in the table (default: their own). A fold's
    group starts with the held-out cells' dataset. Folds with the same training set share a
    training run."""
    cells, training, trained = [], {}, {}
    infer_spikes(recordings[0].calcium[None][:, :500], recordings[0].fps)  # compile once, outside the timings
    oasis = run_oasis(recordings, oasis_python) if oasis_python else None
    for group, held, *label in folds or dataset_folds(recordings):
        targets = [recordings[i] for i in held]
        dataset = group.split("/")[0]
        siblings = [r for i, r in enumerate(recordings) if i not in held and r.dataset == dataset]
        train = [r for i, r in enumerate(recordings) if i not in held and not same_cells(r, targets)]
        if unseen:  # the held-out cells' preparation is not trained on: its other cells only calibrate
            train = [r for r in train if r.dataset != dataset]
        fold_params = specialize(params, targets, train, dataset, focus, match_noise)
        key = (tuple(id(r) for r in train), json.dumps(fold_params, sort_keys=True, default=str))
        fresh = key not in trained
        if fresh:
            trained[key] = timed(lambda: train_models(train, fold_params, ensemble))
        model, seconds = trained[key]
        seconds = seconds if fresh else 0.0
        if calibrate:
            model = calibrated(model, siblings)
        training[group] = {
            "seconds": seconds,
            "training_correlation": float(np.mean([m.score for m in model])),
            "params": fold_params,
            **timing(model),
        }
        done = f"in {seconds:.0f} s" if fresh else "(the model of an earlier fold)"
        print(f"fold {group}: trained on {len(train)} recordings {done}", file=sys.stderr, flush=True)
        for i in held:
            r = recordings[i]
            row = {"dataset": label[0] if label else r.dataset, "cell": r.name, "fps": r.fps}
            row["seconds_of_data"] = r.calcium.size / r.fps
            for method, (spikes, seconds) in our_methods(r, model).items():
                row[method] = score(spikes, r)
                row[f"{method}_seconds"] = seconds
            if oasis:
                row["oasis-ar1"] = score(oasis[0][i], r)
                row["oasis-ar1_seconds"] = oasis[1][i]
            cells.append(row)
    return {"cells": cells, "training": training}


def cell_folds(recordings, folds: int = 2) -> list[tuple[str, list[int]]]:
    """Held-out cells that look like the challenge's test cells: other cells of a spikefinder
    dataset (same preparation, indicator, 100 Hz resampling and noise), the rest of that
    dataset and every other dataset for training. Cells alternate between ``folds`` folds."""
    out = []
    for dataset in sorted({r.dataset for r in recordings if r.dataset.startswith("spikefinder-")}):
        members = [i for i, r in enumerate(recordings) if r.dataset == dataset]
        for k in range(folds):
            out.append((f"{dataset}/fold{k}", members[k::folds]))
    return out


def mirror_folds(recordings) -> list[tuple[str, list[int], str]]:
    """The folds of ``--cv mirror`` (``MIRRORS``), labelled with the test dataset they stand for."""
    out = []
    for test, source in MIRRORS.items():
        members = [i for i, r in enumerate(recordings) if r.dataset == source]
        if source == own_preparation(test):  # its own cells: half calibrate
            out += [(f"{source}/fold{k}", members[k::2], test) for k in range(2)]
        else:
            out.append((source, members, test))
    return out


def dataset_folds(recordings) -> list[tuple[str, list[int]]]:
    """Leave one dataset out (datasets that record the same cells go out together)."""
    groups = sorted({SAME_CELLS.get(r.dataset, r.dataset) for r in recordings})
    return [(g, [i for i, r in enumerate(recordings) if SAME_CELLS.get(r.dataset, r.dataset) == g]) for g in groups]


def summarize(cells: list) -> dict:
    methods = [k for k in cells[0] if k.endswith("_seconds") and k != "seconds_of_data"]
    methods = [m[: -len("_seconds")] for m in methods]
    datasets = sorted({c["dataset"] for c in cells})
    table = {}
    for d in datasets:
        rows = [c for c in cells if c["dataset"] == d]
        table[d] = {m: float(np.nanmean([c[m] for c in rows])) for m in methods}
        table[d].update({f"{m}_seconds": float(sum(c[f"{m}_seconds"] for c in rows)) for m in methods})
        table[d]["cells"] = len(rows)
    summary = {
        m: {
            "mean_over_cells": float(np.nanmean([c[m] for c in cells])),
            "mean_over_datasets": float(np.mean([table[d][m] for d in datasets])),
            "seconds": float(sum(c[f"{m}_seconds"] for c in cells)),
            "cells_per_second": len(cells) / max(float(sum(c[f"{m}_seconds"] for c in cells)), 1e-9),
        }
        for m in methods
    }
    return {"datasets": table, "methods": summary}


def print_table(result: dict) -> None:
    summary = result["summary"]
    methods = list(summary["methods"])
    print(f"{'cell':48s} {'fps':>6s} " + " ".join(f"{m:>18s}" for m in methods))
    for c in result["cells"]:
        print(
            f"{c['dataset'][:16] + '/' + c['cell'][-31:]:48s} {c['fps']:6.1f} "
            + " ".join(f"{c[m]:18.3f}" for m in methods)
        )
    print()
    print(f"{'dataset':24s} {'cells':>5s} " + " ".join(f"{m:>18s}" for m in methods))
    for d, row in summary["datasets"].items():
        print(f"{d:24s} {row['cells']:5d} " + " ".join(f"{row[m]:18.3f}" for m in methods))
    for label in ("mean_over_cells", "mean_over_datasets", "seconds", "cells_per_second"):
        print(f"{label:30s} " + " ".join(f"{summary['methods'][m][label]:18.3f}" for m in methods))
    training = result.get("training_seconds")
    if training is None and "training" in result:
        training = sum(fold["seconds"] for fold in result["training"].values())
    if training is not None:
        print(f"supervised training: {training:.0f} s in all (inference seconds above exclude it)")
    if "oasis-ar1" in methods:
        ours = summary["methods"]["deconvolution-ar1"]
        theirs = summary["methods"]["oasis-ar1"]
        print(
            f"deconvolution-ar1 / oasis-ar1: correlation ratio {ours['mean_over_cells'] / theirs['mean_over_cells']:.3f}, "
            f"time ratio {ours['seconds'] / theirs['seconds']:.3f}"
        )


def parse_value(text: str):
    """A --set value: an int, a float, else the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_eval_dir(folder: Path) -> list:
    recordings = []
    for calcium in sorted(folder.glob("*.test.calcium.csv")):
        n = calcium.name.split(".")[0]
        recordings += read_spikefinder(calcium, calcium.with_name(f"{n}.test.spikes.csv"), dataset=f"test-{n}")
    if not recordings:
        raise SystemExit(f"{folder} has no N.test.calcium.csv files")
    return recordings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--eval-dir", type=Path, help="folder of N.test.calcium.csv / N.test.spikes.csv")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--oasis-python", type=Path, default=DEFAULT_OASIS, help="python of the oasis-deconv venv")
    parser.add_argument("--steps", type=int, default=1500, help="training steps of the supervised network")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cv",
        choices=["datasets", "cells", "unseen-cells", "mirror"],
        default="datasets",
        help="datasets: leave one dataset out; cells: held-out cells of each spikefinder dataset "
        "(like the challenge's test cells), 2 folds; unseen-cells: the same held-out cells, their "
        "dataset's other cells only calibrate the timing (shift, blur) and are not trained on; "
        "mirror: an estimate for the kept-aside test datasets 1, 3, 4 and 5, each mirrored by the "
        "cells here that differ from the training data as its cells do (MIRRORS)",
    )
    parser.add_argument("--rate", type=float, help="the network's rate in Hz (default: the builder's)")
    parser.add_argument("--ensemble", type=int, default=1, help="networks per fold, seeds seed.. (mean prediction)")
    parser.add_argument(
        "--focus",
        type=float,
        default=0.0,
        help="a model per target dataset: this fraction of its training windows from that dataset's "
        "own training cells (spikefinder-N for test-N), where there are any",
    )
    parser.add_argument(
        "--match-noise",
        action="store_true",
        help="a model per target dataset, trained at the median noise level of its traces (CASCADE)",
    )
    parser.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="do not shift and smooth the output per target dataset to fit its preparation's training cells "
        "(spikefinder-N for test-N; the held-out cells' own dataset in --cv cells)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="other training parameters, e.g. smoothing=0.05 objective=correlation",
    )
    args = parser.parse_args(argv)
    params = {"steps": args.steps, "seed": args.seed}
    if args.rate:
        params["rate"] = args.rate
    for pair in args.set:
        name, _, value = pair.partition("=")
        params[name] = parse_value(value)
    recordings = load_ground_truth(args.data)
    oasis_python = args.oasis_python if args.oasis_python and args.oasis_python.exists() else None
    if oasis_python is None:
        print(f"oasis-deconv not found at {args.oasis_python}: compared without it", file=sys.stderr)
    if args.eval_dir:
        test = read_eval_dir(args.eval_dir)
        datasets = sorted({r.dataset for r in test})
        preparation = {d: own_preparation(d) for d in datasets}
        own = {d: [r for r in recordings if r.dataset == preparation[d]] for d in datasets}
        specialized = bool(args.focus or args.match_noise)
        trained, seconds = {}, 0.0
        for group in datasets if specialized else [None]:  # a model per test dataset when specialized
            targets = [r for r in test if group in (None, r.dataset)]
            group_params = specialize(params, targets, recordings, preparation.get(group), args.focus, args.match_noise)
            trained[group], secs = timed(lambda: train_models(recordings, group_params, args.ensemble))
            seconds += secs
        models = {}
        for d in datasets:
            chosen = trained[d if specialized else None]
            models[d] = calibrated(chosen, own[d]) if args.calibrate else chosen
        per_group = {d: timing(models[d]) for d in datasets}
        infer_spikes(test[0].calcium[None][:, :500], test[0].fps)
        oasis = run_oasis(test, oasis_python) if oasis_python else None
        cells = []
        for i, r in enumerate(test):
            row = {"dataset": r.dataset, "cell": r.name, "fps": r.fps, "seconds_of_data": r.calcium.size / r.fps}
            model = models[r.dataset]
            for method, (spikes, secs) in our_methods(r, model).items():
                row[method], row[f"{method}_seconds"] = score(spikes, r), secs
            if oasis:
                row["oasis-ar1"], row["oasis-ar1_seconds"] = score(oasis[0][i], r), oasis[1][i]
            cells.append(row)
        result = {
            "eval_dir": str(args.eval_dir),
            "params": params,
            "model_params": per_group,
            "calibrate": args.calibrate,
            "training_seconds": seconds,
            "training_correlation": float(np.mean([m.score for ms in models.values() for m in ms])),
            "cells": cells,
            "summary": summarize(cells),
        }
        result["mean_correlation"] = result["summary"]["methods"]["supervised"]["mean_over_cells"]
    else:
        folds = {"cells": cell_folds, "unseen-cells": cell_folds, "mirror": mirror_folds, "datasets": dataset_folds}
        folds = folds[args.cv](recordings)
        result = {
            "params": params,
            "cv": args.cv,
            "ensemble": args.ensemble,
            "focus": args.focus,
            "match_noise": args.match_noise,
            "calibrate": args.calibrate,
            **cross_validate(
                recordings,
                params,
                oasis_python,
                folds,
                args.ensemble,
                args.focus,
                args.match_noise,
                args.calibrate,
                unseen=args.cv in ("unseen-cells", "mirror"),
            ),
        }
        result["summary"] = summarize(result["cells"])
        # the mirror estimates each test dataset: its figure is the mean over them
        mean = "mean_over_datasets" if args.cv == "mirror" else "mean_over_cells"
        result["mean_correlation"] = result["summary"]["methods"]["supervised"][mean]
    print_table(result)
    if args.cv == "mirror" and not args.eval_dir:
        print(f"estimate for the kept-aside test cells, mean over test datasets: {result['mean_correlation']:.3f}")
    text = json.dumps(result, indent=1, default=float)
    if args.json:
        args.json.write_text(text)
    print(json.dumps({"mean_correlation": round(result["mean_correlation"], 4)}))
    print(f"mean_correlation={result['mean_correlation']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
