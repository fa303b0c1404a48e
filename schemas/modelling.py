"""Daily modelling work on trained models: sweeps over configs and seeds, and ensembles of seeds.

**Sweeps** (nnfabrik's ``Experiments``): one ``Sweep`` row declares a grid, random or Optuna
search over dataset/model/trainer configs (``pipeline.sysid.search``) and the seeds and
datasets every sampled config is trained with. ``expand(name)`` samples trials, inserts their
configs with ``schemas.params.insert_config`` and one ``Sweep.Member`` per (trial, dataset,
seed): the ``TrainedModel`` keys that workers (``pipeline worker``) then train and score. An
Optuna search grows in rounds: ``expand`` again once a round is scored asks for the next
``batch`` trials, told the stored scores of every earlier trial (the study is rebuilt from the
sweep's own rows each time: no Optuna storage, no server). ``best(name, score=...)`` is the
trial with the best mean of any score over its datasets and seeds.

A config that a sweep sampled and created (of a kind its space varies) is trained only as a
member of a sweep: ``TrainedModel.key_source`` leaves out its other combinations
(``restrict_to_sweeps``), so a random or Optuna search trains its trials, not the product of
every sampled model config with every sampled trainer config, dataset and seed in the database.
To train such a config outside sweeps too (say the best one, with the lab's usual trainer),
``release`` it. Deleting a ``Sweep`` row releases every config it owned: their full product
becomes pending work; delete the configs too (``sysid.ModelConfig & ...``) to drop them.

**Ensembles**: an ``Ensemble`` is a set of trained models that differ only by seed;
``EnsembleScore`` scores it like one model, on the mean of its members' predictions.
"""

from __future__ import annotations

import math
from typing import Any

import datajoint as dj
import numpy as np

from pipeline import identity

from . import params, sysid, values

schema = dj.Schema()

# scores a sweep can be judged by: the trainer's validation score and the test-tier scores
SCORES = ("score", "single_trial_correlation", "correlation_to_average", "feve")
CONFIG_TABLES = {"dataset": sysid.DatasetConfig, "model": sysid.ModelConfig, "trainer": sysid.TrainerConfig}


# --------------------------------------------------------------------------------------- #
# sweeps
# --------------------------------------------------------------------------------------- #


@schema
class Sweep(dj.Manual):
    definition = """
    # a search over configs and seeds, declared as one row (nnfabrik's Experiments)
    sweep_name          : varchar(64)
    ---
    strategy            : enum('grid', 'random', 'optuna')
    datasets            : json          # dataset_ids every trial is trained on
    seeds               : json          # seeds every trial is trained with
    dataset_builder     : varchar(128)
    model_builder       : varchar(128)
    trainer_builder     : varchar(128)
    base                : json          # fixed config values {"dataset": {...}, "model": {...}, "trainer": {...}}
    space               : json          # {"<kind>.<key>": [values] or {"low", "high", "log"}}
    n_trials = null     : int32         # random, optuna: trials in all (grid: every combination)
    batch = 1           : int32         # optuna: trials asked per round
    objective = "correlation_to_average" : varchar(64)  # the score an optuna search maximizes
    search_seed = 0     : int32         # seed of random and optuna sampling
    note = ""           : varchar(255)
    """

    class Trial(dj.Part):
        definition = """
        # one sampled config, trained on every dataset of the sweep with every seed
        -> master
        trial           : int32     # 0, 1, ... in the order sampled
        ---
        params          : json      # the sampled values {"<kind>.<key>": value}
        -> sysid.DatasetConfig
        -> sysid.ModelConfig
        -> sysid.TrainerConfig
        """

    class Member(dj.Part):
        definition = """
        # a trained model a trial asks for; its TrainedModel key is in (Trial * Member)
        -> master.Trial
        -> sysid.Dataset
        -> sysid.Seed
        """

    class OwnDatasetConfig(dj.Part):
        definition = """
        # a dataset config this sweep sampled and created: trained only as the sweep's members
        -> master
        -> sysid.DatasetConfig
        """

    class OwnModelConfig(dj.Part):
        definition = """
        # a model config this sweep sampled and created: trained only as the sweep's members
        -> master
        -> sysid.ModelConfig
        """

    class OwnTrainerConfig(dj.Part):
        definition = """
        # a trainer config this sweep sampled and created: trained only as the sweep's members
        -> master
        -> sysid.TrainerConfig
        """


OWN_PARTS = {"dataset": Sweep.OwnDatasetConfig, "model": Sweep.OwnModelConfig, "trainer": Sweep.OwnTrainerConfig}


def add_sweep(
    name: str,
    *,
    strategy: str,
    datasets: list[str],
    seeds: list[int],
    space: dict[str, Any],
    model_builder: str,
    trainer_builder: str = "standard_trainer",
    dataset_builder: str = "filetree",
    base: dict[str, dict[str, Any]] | None = None,
    n_trials: int | None = None,
    batch: int = 1,
    objective: str = "correlation_to_average",
    search_seed: int = 0,
    note: str = "",
) -> dict[str, str]:
    """Declare a sweep (nothing is sampled yet: see ``expand``); return its key.

    Parameters
    ----------
    name
        The sweep's name (at most 64 characters).
    strategy
        ``"grid"`` (every combination of the space's lists), ``"random"`` (``n_trials``
        draws) or ``"optuna"`` (``n_trials`` asked ``batch`` at a time from a TPE sampler).
    datasets, seeds
        Every trial is trained on each dataset with each seed (seeds are added to ``Seed``).
    space
        ``{"<kind>.<key>": [values] or {"low", "high", "log"}}``; see ``pipeline.sysid.search``.
    model_builder, trainer_builder, dataset_builder
        Builder names; ``base[kind]`` holds their fixed config values.
    objective
        The score an Optuna search maximizes, one of ``SCORES``.

    Raises
    ------
    ValueError
        Naming the bad value: unknown strategy or objective, a space key the builder does not
        take, a grid over ranges, a missing ``n_trials``, an unknown dataset, a non-int seed.
    """
    from pipeline.sysid import search

    base = dict(base or {})
    extra = sorted(set(base) - set(search.KINDS))
    if extra:
        raise ValueError(f"sweep {name!r}: base has kinds {extra} (expected some of {list(search.KINDS)})")
    base = {kind: dict(base.get(kind) or {}) for kind in search.KINDS}
    if strategy not in search.STRATEGIES:
        raise ValueError(f"sweep {name!r}: strategy {strategy!r} (expected one of {list(search.STRATEGIES)})")
    if objective not in SCORES:
        raise ValueError(f"sweep {name!r}: objective {objective!r} (expected one of {list(SCORES)})")
    if strategy != "grid" and (not isinstance(n_trials, int) or n_trials < 1):
        raise ValueError(f"sweep {name!r}: a {strategy} search needs n_trials >= 1, got {n_trials!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"sweep {name!r}: batch = {batch!r} (expected an int >= 1)")
    builders = {"dataset": dataset_builder, "model": model_builder, "trainer": trainer_builder}
    _check_space(name, space, builders, base, strategy)
    _check_datasets_and_seeds(name, datasets, seeds)
    sysid.Seed.insert([{"seed": int(s)} for s in seeds], skip_duplicates=True)
    Sweep.insert1(
        dict(
            sweep_name=name,
            strategy=strategy,
            datasets=list(datasets),
            seeds=[int(s) for s in seeds],
            dataset_builder=dataset_builder,
            model_builder=model_builder,
            trainer_builder=trainer_builder,
            base=base,
            space=space,
            n_trials=n_trials,
            batch=batch,
            objective=objective,
            search_seed=int(search_seed),
            note=note,
        )
    )
    return {"sweep_name": name}


def _check_space(name: str, space: dict, builders: dict[str, str], base: dict, strategy: str) -> None:
    """Every space key is a config key of its builder, the base configs normalize, the strategy can sample."""
    from pipeline.sysid import search

    dimensions = search.parse(space)
    for kind, builder in builders.items():
        table = CONFIG_TABLES[kind]
        fn = identity.resolve(table.builder_kind, builder)
        taken = identity.config_parameters(fn)
        for d in dimensions:
            key = d.name.partition(".")[2]
            if d.name.startswith(kind + ".") and key not in taken:
                raise ValueError(
                    f"sweep {name!r}: {kind} builder {builder!r} does not take {key!r} (space key {d.name!r}; "
                    f"expected one of {sorted(taken)})"
                )
        params.make_config(table, builder, base[kind])  # a bad base config is an error now
    for d in dimensions:  # every listed value and both ends of every range must suit the builder
        kind, _, key = d.name.partition(".")
        for value in d.choices if d.choices is not None else (d.low, d.high):
            params.make_config(CONFIG_TABLES[kind], builders[kind], {**base[kind], key: value})
    if strategy == "grid":
        search.grid(space)
    elif strategy == "optuna":
        search.optuna_distributions(space)


def _check_datasets_and_seeds(name: str, datasets: list[str], seeds: list[int]) -> None:
    if not datasets:
        raise ValueError(f"sweep {name!r}: no datasets (expected at least one dataset_id)")
    missing = [d for d in datasets if not sysid.Dataset & {"dataset_id": d}]
    if missing:
        raise ValueError(f"sweep {name!r}: datasets {missing} are not in Dataset (expected imported datasets)")
    bad = [s for s in seeds if not isinstance(s, (int, np.integer)) or isinstance(s, bool)]
    if not seeds or bad or len(set(seeds)) != len(seeds):
        raise ValueError(f"sweep {name!r}: seeds {list(seeds)!r} (expected distinct ints, at least one)")


def _sweep(name: str) -> dict[str, Any]:
    rows = (Sweep & {"sweep_name": name}).to_dicts()
    if not rows:
        known = ", ".join(Sweep().to_arrays("sweep_name")) or "none"
        raise LookupError(f"no sweep {name!r} (expected one of: {known})")
    row = rows[0]
    for attr in ("datasets", "seeds", "base", "space"):
        row[attr] = values.json_value(row[attr])
    return row


def expand(name: str) -> int:
    """Sample the sweep's next trials and insert their configs and members; return how many trials were added.

    grid: every combination, once; random: ``n_trials`` draws, once; optuna: the next ``batch``
    trials (up to ``n_trials``) once every earlier trial is scored on every dataset and seed or
    has failed, told each trial's mean ``objective`` (a failed trial as failed); 0 while some
    are still waiting for their scores.
    """
    from pipeline.sysid import search

    sweep = _sweep(name)
    done = len(Sweep.Trial & {"sweep_name": name})
    if sweep["strategy"] == "grid":
        samples = search.grid(sweep["space"])[done:]
    elif sweep["strategy"] == "random":
        samples = search.random_samples(sweep["space"], sweep["n_trials"], sweep["search_seed"])[done:]
    else:
        samples = _optuna_next(sweep, done)
    for number, sample in enumerate(samples, start=done):
        _insert_trial(sweep, number, sample)
    return len(samples)


def _optuna_next(sweep: dict[str, Any], done: int) -> list[dict[str, Any]]:
    from pipeline.sysid import search

    n = min(sweep["batch"], sweep["n_trials"] - done)
    if n <= 0:
        return []
    trials = trial_values(sweep["sweep_name"], sweep["objective"])
    if any(t["value"] is None and not t["failed"] for t in trials):
        return []  # a round is asked for once the last one is scored
    told = [(t["params"], math.nan if t["failed"] else t["value"]) for t in trials]
    return search.optuna_ask(sweep["space"], told, n, sweep["search_seed"])


def _insert_trial(sweep: dict[str, Any], number: int, sample: dict[str, Any]) -> None:
    """Insert a trial's configs (recording those it creates), the trial and its members, in one transaction."""
    from pipeline.sysid import search

    name = sweep["sweep_name"]
    updates = search.split(sample)
    with Sweep.connection.transaction:
        keys, owned = {}, []
        for kind, table in CONFIG_TABLES.items():
            builder = sweep[f"{kind}_builder"]
            config = {**sweep["base"][kind], **updates[kind]}
            config_hash, _ = params.make_config(table, builder, config)
            new = not table & {params.hash_attribute(table): config_hash}
            key = params.insert_config(table, builder, config, note=f"sweep {name}"[:255])
            keys.update(key)
            if new and updates[kind]:
                owned.append((kind, key))
        Sweep.Trial.insert1({"sweep_name": name, "trial": number, "params": sample, **keys})
        for kind, key in owned:
            OWN_PARTS[kind].insert1({"sweep_name": name, **key}, skip_duplicates=True)
        Sweep.Member.insert(
            {"sweep_name": name, "trial": number, "dataset_id": d, "seed": int(s)}
            for d in sweep["datasets"]
            for s in sweep["seeds"]
        )


def release(config_key: dict[str, str]) -> int:
    """Let the configs at ``config_key`` (e.g. ``{"model_hash": ...}``) train outside sweeps; return how many.

    After this, ``TrainedModel.key_source`` combines them like any config (the product with
    every dataset, other config and seed), except with configs that sweeps still own.
    """
    released = 0
    for kind, part in OWN_PARTS.items():
        attribute = params.hash_attribute(CONFIG_TABLES[kind])
        if attribute in config_key:
            rows = part & {attribute: config_key[attribute]}
            released += len(rows)
            rows.delete_quick()
    return released


def members(name: str) -> list[dict[str, Any]]:
    """The ``TrainedModel`` keys the sweep's trials ask for (trained or not), by trial, dataset, seed."""
    rows = (Sweep.Member * Sweep.Trial & {"sweep_name": name}).to_dicts(order_by=("trial", "dataset_id", "seed"))
    return [{k: r[k] for k in sysid.TrainedModel.primary_key} for r in rows]


def restrict_to_sweeps(product: dj.expression.QueryExpression) -> dj.expression.QueryExpression:
    """``product`` (TrainedModel's parents) without the non-member combinations of configs that sweeps own."""
    if schema.database is None:  # this stage is not activated: no sweeps
        return product
    owned = product & [part.proj() for part in OWN_PARTS.values()]
    wanted = (Sweep.Member * Sweep.Trial).proj(*(params.hash_attribute(t) for t in CONFIG_TABLES.values()))
    return product - (owned - wanted)


def trial_values(name: str, score: str = "correlation_to_average") -> list[dict[str, Any]]:
    """Every trial of a sweep with its mean ``score`` over its datasets and seeds.

    Returns
    -------
    list of dicts, by trial: ``trial``, ``params``, the config hashes, ``n_members``,
    ``n_scored``, ``failed`` (a member's TrainedModel or Score job ended in an error, e.g. a
    diverged training) and ``value`` (the mean; None until every member has the score).
    """
    if score not in SCORES:
        raise ValueError(f"score {score!r} (expected one of {list(SCORES)})")
    restriction = {"sweep_name": name}
    table = sysid.TrainedModel if score == "score" else sysid.Score
    scored = (Sweep.Member * Sweep.Trial * table.proj(score) & restriction).to_dicts()
    by_trial: dict[int, list[float]] = {}
    for row in scored:
        if row[score] is not None:
            by_trial.setdefault(int(row["trial"]), []).append(float(row[score]))
    failed = _failed_trials(name)
    sizes = {int(t): 0 for t in (Sweep.Trial & restriction).to_arrays("trial")}
    for trial in (Sweep.Member & restriction).to_arrays("trial"):
        sizes[int(trial)] += 1
    out = []
    for row in (Sweep.Trial & restriction).to_dicts(order_by="trial"):
        scores = by_trial.get(int(row["trial"]), [])
        n = sizes[int(row["trial"])]
        out.append(
            {
                "trial": int(row["trial"]),
                "params": values.json_value(row["params"]),
                **{params.hash_attribute(t): row[params.hash_attribute(t)] for t in CONFIG_TABLES.values()},
                "n_members": n,
                "n_scored": len(scores),
                "failed": int(row["trial"]) in failed,
                "value": float(np.mean(scores)) if scores and len(scores) == n else None,
            }
        )
    return out


def _failed_trials(name: str) -> set[int]:
    """Trials of which a member's TrainedModel or Score job is recorded as an error."""
    keys = Sweep.Member * Sweep.Trial & {"sweep_name": name}
    names = sysid.TrainedModel.primary_key
    failed: set[int] = set()
    for table in (sysid.TrainedModel, sysid.Score):
        errors = [{a: row[a] for a in names} for row in table().jobs.errors.to_dicts()]
        if errors:
            failed.update(int(t) for t in (keys & errors).to_arrays("trial"))
    return failed


def best(name: str, score: str = "correlation_to_average") -> dict[str, Any]:
    """The sweep's trial with the highest mean ``score`` over its datasets and seeds (fully scored trials only).

    Returns
    -------
    dict: the ``trial_values`` row of the best trial plus ``members`` (its TrainedModel keys).

    Raises
    ------
    LookupError
        If no trial has the score on every member yet, saying how many are scored.
    """
    _sweep(name)
    trials = trial_values(name, score)
    complete = [t for t in trials if t["value"] is not None]
    if not complete:
        scored = sum(t["n_scored"] for t in trials)
        total = sum(t["n_members"] for t in trials)
        raise LookupError(
            f"sweep {name!r}: no trial has {score} on all its members yet ({scored} of {total} members scored)"
        )
    top = max(complete, key=lambda t: (t["value"], -t["trial"]))
    keys = [k for k in members(name) if all(k[a] == top[a] for a in top if a.endswith("_hash"))]
    return {**top, "members": keys}


# --------------------------------------------------------------------------------------- #
# ensembles
# --------------------------------------------------------------------------------------- #


@schema
class Ensemble(dj.Manual):
    definition = """
    # trained models that differ only by seed, scored as one model (their predictions averaged)
    -> sysid.Dataset
    -> sysid.DatasetConfig
    -> sysid.ModelConfig
    -> sysid.TrainerConfig
    ensemble_hash : char(32)    # hash of its seeds
    ---
    seeds         : json        # the seeds of its members, ascending
    """

    class Member(dj.Part):
        definition = """
        -> master
        -> sysid.Seed
        """


def add_ensemble(key: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """Declare the ensemble of the trained models at ``key`` (all but the seed) with ``seeds``; return its key.

    Raises
    ------
    ValueError
        If ``seeds`` is empty, not distinct ints, or ``key`` does not name a dataset and its
        three configs.
    """
    bad = [s for s in seeds if not isinstance(s, (int, np.integer)) or isinstance(s, bool)]
    if not seeds or bad or len(set(seeds)) != len(seeds):
        raise ValueError(f"ensemble seeds {list(seeds)!r} (expected distinct ints, at least one)")
    names = [a for a in sysid.TrainedModel.primary_key if a != "seed"]
    missing = [a for a in names if a not in key]
    if missing:
        raise ValueError(f"ensemble key {key!r} lacks {missing} (expected {names})")
    seeds = sorted(int(s) for s in seeds)
    full = {a: key[a] for a in names}
    full["ensemble_hash"] = identity.config_hash({"seeds": seeds})
    with Ensemble.connection.transaction:
        Ensemble.insert1({**full, "seeds": seeds}, skip_duplicates=True)
        Ensemble.Member.insert([{**full, "seed": s} for s in seeds], skip_duplicates=True)
    return full


@schema
class EnsembleScore(dj.Computed):
    definition = """
    # test-tier scores of an ensemble: its members' predictions averaged, then the Sensorium metrics
    -> Ensemble
    ---
    single_trial_correlation : float64   # mean over units
    correlation_to_average   : float64   # mean over units
    feve = null              : float64   # mean over units with FEV >= 0.15 (null if none)
    n_units                  : int32
    n_units_feve             : int32
    n_models                 : int32
    """

    class Unit(dj.Part):
        definition = """
        -> master
        unit_id : int64
        ---
        single_trial_correlation : float64
        correlation_to_average   : float64
        feve                     : float64
        fev                      : float64
        """

    @property
    def key_source(self):
        # an ensemble is scored once every member is trained
        return Ensemble - (Ensemble.Member - sysid.TrainedModel.proj()).proj()

    def make_fetch(self, key):
        rows = (Ensemble.Member & key).to_dicts(order_by="seed")
        first = {**key, "seed": rows[0]["seed"]}
        dataset_config, model_config, _ = sysid._configs(first)
        names = ((sysid.DatasetConfig & key).fetch1("builder"), (sysid.ModelConfig & key).fetch1("builder"))
        weights = [(sysid.TrainedModel & {**key, "seed": r["seed"]}).fetch1("weights").read() for r in rows]
        members = [(int(r["seed"]), values.bytes_as_text(w)) for r, w in zip(rows, weights)]
        return names, dataset_config, model_config, members

    def make_compute(self, key, names, dataset_config, model_config, members):
        from pipeline.sysid import ensembles

        scores = ensembles.score_ensemble(
            identity.resolve("dataset", names[0]),
            dataset_config,
            identity.resolve("model", names[1]),
            model_config,
            [(seed, values.text_as_bytes(weights)) for seed, weights in members],
        )
        return (scores[key["dataset_id"]], len(members))

    def make_insert(self, key, scores, n_models):
        row, units = sysid.score_rows(key, scores)
        self.insert1({**row, "n_models": n_models})
        self.Unit.insert(units)


# --------------------------------------------------------------------------------------- #
# retraining
# --------------------------------------------------------------------------------------- #


def retrain(key: dict[str, Any], device: str | None = None) -> dict[str, Any]:
    """Train one trained model again from scratch and compare weights and scores with the stored ones.

    ``sysid.reproduce`` re-scores the stored weights; this repeats the training itself (no
    checkpoint is used), from the builders, configs and seed of the key, where the trainer
    trains (CUDA when there is one). On the machine and device it was trained on, the result
    is the same to the bit; elsewhere, expect small differences.

    Parameters
    ----------
    key
        Restricts ``TrainedModel`` to exactly one row.
    device
        Where the retrained model is scored: ``"cpu"``, ``"cuda"`` or None (CUDA when there is one).

    Returns
    -------
    dict
        ``key`` (the full key), ``max_weight_difference`` (largest absolute difference over
        every weight; inf if the tensors' names or shapes differ), ``score`` and
        ``stored_score`` (the trainer's validation score), ``scores`` (test scores of the
        retrained model), ``stored`` (the ``Score`` row or None), ``max_score_difference``
        (test means and per unit, or None without a stored Score), ``provenance`` of the
        retraining and ``stored_provenance``.
    """
    from pipeline.sysid import fitting

    try:
        full, names, dataset_config, model_config, seed, stored_weights = sysid._one_model(key)
    except LookupError as error:
        raise LookupError(f"retrain: {error}") from None
    trainer_fn, trainer_config = params.load_config(sysid.TrainerConfig, full)
    fit = fitting.fit(
        identity.resolve("dataset", names[0]),
        dataset_config,
        identity.resolve("model", names[1]),
        model_config,
        trainer_fn,
        trainer_config,
        seed,
    )
    weights = fitting.state_dict_bytes(fit.state_dict)
    scores = sysid._score(full, names, dataset_config, model_config, seed, weights, device=device)
    stored, score_difference = sysid.stored_score_difference(full, scores)
    row = (sysid.TrainedModel & full).fetch1()
    return {
        "key": full,
        "max_weight_difference": max_weight_difference(fitting.load_state_dict(stored_weights), fit.state_dict),
        "score": fit.score,
        "stored_score": float(row["score"]),
        "scores": scores,
        "stored": stored,
        "max_score_difference": score_difference,
        "provenance": fit.provenance,
        "stored_provenance": values.json_value(row["provenance"]),
    }


def max_weight_difference(a: dict, b: dict) -> float:
    """Largest absolute difference between two state dicts; inf if their names or shapes differ."""
    if sorted(a) != sorted(b) or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    diffs = [float((a[k].double() - b[k].double().to(a[k].device)).abs().max()) for k in a if a[k].numel()]
    return max(diffs, default=0.0)
