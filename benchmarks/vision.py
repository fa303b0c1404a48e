"""Benchmark of neural data as an inductive bias for digit classifiers, and of HARD distillation.

A model of V1 (``cnn_factorized``) is trained on a simulated population; its predicted
responses to scikit-learn's digits (fitted to its input size) are the neural targets. For
every seed, on the same split:

- plain: cross-entropy only;
- similarity (Li et al. 2019), co-trained (Safarani et al. 2021): with the V1 targets,
  and their controls: ``shuffled`` (targets paired with other images) and ``untrained``
  (predictions of the V1 architecture before training);
- distillation: a teacher CNN trained with random affine augmentation, distilled into an MLP
  student by plain KD and by HARD (learned adversarial spatial augmentor); accuracy in domain
  and on rotated / shifted / scaled test digits, and teacher queries.

Accuracy is on the test tier, clean, per distortion (mean over its three strengths; all
strengths in the JSON) and under L-inf PGD, as mean +- std over seeds.

    nice python benchmarks/vision.py --json vision.json          # default: 3 seeds, minutes on 2 cores
    nice python benchmarks/vision.py --seeds 0 1 2 3 4 --epochs 20 --json vision.json
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

from pipeline.simulation.population import simulate_population  # noqa: E402
from pipeline.sysid import data as sysid_data  # noqa: E402
from pipeline.sysid import fitting, models as sysid_models, training as sysid_training  # noqa: E402
from pipeline.vision import data, distortions, models, neural, robustness, stimuli, training  # noqa: E402

# the neural-target methods: name -> (trainer, trainer config, response head, targets)
METHODS = {
    "plain": ("plain_classifier", {}, False, None),
    "similarity": ("similarity_regularized", {"similarity_weight": 5.0}, False, "trained"),
    "similarity_shuffled": (
        "similarity_regularized",
        {"similarity_weight": 5.0, "shuffle_targets": True},
        False,
        "trained",
    ),
    "similarity_untrained": ("similarity_regularized", {"similarity_weight": 5.0}, False, "untrained"),
    "cotrained": ("cotrained", {"response_weight": 1.0}, True, "trained"),
    "cotrained_shuffled": ("cotrained", {"response_weight": 1.0, "shuffle_targets": True}, True, "trained"),
    "cotrained_untrained": ("cotrained", {"response_weight": 1.0}, True, "untrained"),
}
TRAINERS = {
    "plain_classifier": training.plain_classifier,
    "similarity_regularized": training.similarity_regularized,
    "cotrained": training.cotrained,
}


def v1_predictions(size: int, n_neurons: int, n_train: int, epochs: int, images: np.ndarray) -> dict:
    """Train a model of V1 on a simulated population; its trained and untrained responses to ``images``."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = simulate_population(
            Path(tmp) / "v1",
            n_neurons=n_neurons,
            n_train=n_train,
            n_test_images=50,
            repeats=4,
            seed=0,
            height=size,
            width=size,
            with_behavior=False,
        )
        config = {"paths": [str(folder)], "data_keys": ["v1"], "batch_size": 64}
        model_config = {"hidden_channels": 16, "layers": 2, "input_kernel": 7, "hidden_kernel": 5, "pad_input": True}
        started = time.perf_counter()
        fit = fitting.fit(
            sysid_data.filetree_loaders,
            config,
            sysid_models.cnn_factorized,
            model_config,
            sysid_training.standard_trainer,
            {"max_epochs": epochs},
            0,
        )
        untrained, loaders = fitting.build(
            sysid_data.filetree_loaders, config, sysid_models.cnn_factorized, model_config, 0
        )
        trained, _ = fitting.build(sysid_data.filetree_loaders, config, sysid_models.cnn_factorized, model_config, 0)
        trained.load_state_dict(fit.state_dict)
        scores = fitting.evaluate(trained.eval(), loaders, "test")["v1"]
        return {
            "trained": neural.encoder_predictions(trained, loaders, "v1", images),
            "untrained": neural.encoder_predictions(untrained.eval(), loaders, "v1", images),
            "validation_correlation": fit.score,
            "test_correlation_to_average": float(scores["correlation_to_average"]),
            "seconds": time.perf_counter() - started,
        }


def summary(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": [float(v) for v in values]}


def run_method(name: str, stimulus: dict, targets: dict, seed: int, epochs: int) -> dict:
    trainer, config, head, source = METHODS[name]
    loaders = data.stimulus_split(
        seed, images=stimulus["images"], labels=stimulus["labels"], targets=None if source is None else targets[source]
    )
    model = models.digit_cnn(loaders, seed, response_head=head)
    result = TRAINERS[trainer](model, loaders, seed, epochs=epochs, **config)
    test = data.tier_arrays(loaders, "test")
    return {
        **robustness.robustness(model.eval(), test["images"], test["labels"], seed=seed),
        "validation_accuracy": result.score,
        "seconds": result.output["seconds"],
    }


def run_distillation(
    stimulus: dict, seed: int, epochs: int, teacher_augment: float, magnitude: float, conditional: bool = False
) -> dict:
    loaders = data.stimulus_split(seed, images=stimulus["images"], labels=stimulus["labels"])
    test = data.tier_arrays(loaders, "test")
    teacher = models.digit_cnn(loaders, seed, channels=[16, 32])
    training.plain_classifier(teacher, loaders, seed, epochs=epochs, augment_magnitude=teacher_augment)
    out = {
        "teacher": {
            **robustness.out_of_domain(teacher.eval(), test["images"], test["labels"]),
            "parameters": models.parameter_count(teacher),
        }
    }
    hard = {"magnitude": magnitude, "conditional": conditional}
    for name, trainer, extra in (
        ("kd", training.knowledge_distillation, {}),
        ("hard", training.hard_distillation, hard),
    ):
        student = models.digit_mlp(loaders, seed, hidden=32)
        result = trainer(student, loaders, seed, teacher=teacher, epochs=epochs, **extra)
        out[name] = {
            **robustness.out_of_domain(student.eval(), test["images"], test["labels"]),
            "teacher_queries": result.output["teacher_queries"],
            "parameters": models.parameter_count(student),
        }
        if "augmentor" in result.output:
            out[name]["augmentor"] = result.output["augmentor"]
    return out


def table(results: dict, seeds: list[int]) -> str:
    kinds = list(distortions.STRENGTHS)
    head = f"{'method':22s} {'clean':>12s} " + " ".join(f"{k[:14]:>14s}" for k in kinds) + f" {'PGD':>12s}"
    lines = [head, "-" * len(head)]
    for name, runs in results.items():
        cells = [summary([r["clean"] for r in runs])]
        for kind in kinds:
            cells.append(
                summary([np.mean([d["accuracy"] for d in r["distortions"] if d["distortion"] == kind]) for r in runs])
            )
        cells.append(summary([r["pgd"]["accuracy"] for r in runs]))
        text = [f"{c['mean']:.3f}+-{c['std']:.3f}" for c in cells]
        lines.append(f"{name:22s} {text[0]:>12s} " + " ".join(f"{t:>14s}" for t in text[1:-1]) + f" {text[-1]:>12s}")
    return "\n".join(lines)


def distillation_table(runs: list[dict]) -> str:
    domains = ["in_domain", *distortions.OUT_OF_DOMAIN]
    head = f"{'model':10s} {'params':>7s} {'queries':>9s} " + " ".join(f"{d:>12s}" for d in domains)
    lines = [head, "-" * len(head)]
    for name in ("teacher", "kd", "hard"):
        cells = [summary([r[name][d] for r in runs]) for d in domains]
        queries = "-" if name == "teacher" else f"{int(np.mean([r[name]['teacher_queries'] for r in runs])):d}"
        lines.append(
            f"{name:10s} {runs[0][name]['parameters']:>7d} {queries:>9s} "
            + " ".join(f"{c['mean']:.3f}+-{c['std']:.3f}" for c in cells)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8, help="epochs of every classifier and student")
    parser.add_argument("--size", type=int, default=12, help="height and width of the stimuli (V1 model input)")
    parser.add_argument(
        "--methods",
        nargs="*",
        default=list(METHODS),
        choices=list(METHODS),
        help="neural-target methods to run (none: distillation only)",
    )
    parser.add_argument("--no-distillation", action="store_true")
    parser.add_argument(
        "--teacher-augment", type=float, default=0.3, help="magnitude of the teacher's random affine augmentation"
    )
    parser.add_argument("--hard-magnitude", type=float, default=0.3, help="HARD augmentor's magnitude")
    parser.add_argument("--hard-conditional", action="store_true", help="HARD augmentor sees each image")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()

    stimulus = stimuli.digits_stimuli(height=args.size, width=args.size)
    results, v1 = {}, {}
    if args.methods:
        v1 = v1_predictions(args.size, n_neurons=100, n_train=1500, epochs=10, images=stimulus["images"])
        print(
            f"V1 model: validation correlation {v1['validation_correlation']:.3f}, test correlation to average "
            f"{v1['test_correlation_to_average']:.3f} ({v1['seconds']:.0f} s); targets {v1['trained'].shape}"
        )
        results = {
            name: [run_method(name, stimulus, v1, seed, args.epochs) for seed in args.seeds] for name in args.methods
        }
        print(
            f"\nTest accuracy, mean +- std over seeds {args.seeds} ({len(stimulus['labels'])} digits of "
            f"{args.size}x{args.size}; distortions averaged over strengths {distortions.STRENGTHS}; PGD "
            f"{robustness.PGD})\n"
        )
        print(table(results, args.seeds))
    distilled = []
    if not args.no_distillation:
        distilled = [
            run_distillation(
                stimulus, seed, args.epochs, args.teacher_augment, args.hard_magnitude, args.hard_conditional
            )
            for seed in args.seeds
        ]
        print(
            f"\nDistillation: teacher CNN (random affine augmentation {args.teacher_augment}) -> MLP student, "
            f"plain KD vs HARD (augmentor magnitude {args.hard_magnitude}); test accuracy, out of domain "
            f"{distortions.OUT_OF_DOMAIN}\n"
        )
        print(distillation_table(distilled))
        spread = np.mean([np.mean(r["hard"]["augmentor"]["std_deviation"]) for r in distilled])
        shift = np.mean([np.abs(np.array(r["hard"]["augmentor"]["mean_deviation"])).max() for r in distilled])
        print(
            f"HARD augmentor after training: spread (std) of its affine entries {spread:.3f}, largest mean "
            f"deviation {shift:.3f}, bound {args.hard_magnitude} (a spread far below the bound: it has collapsed "
            "onto nearly one transform)"
        )
    seconds = time.perf_counter() - started
    print(f"\n{seconds:.0f} s in all")
    out = {
        "settings": {
            **vars(args),
            "json": str(args.json) if args.json else None,
            "methods_config": METHODS,
            "strengths": distortions.STRENGTHS,
            "pgd": robustness.PGD,
        },
        "v1": {k: v for k, v in v1.items() if k not in ("trained", "untrained")},
        "methods": results,
        "distillation": distilled,
        "seconds": seconds,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
