"""Search spaces over builder configs and the three ways to sample them: grid, random, Optuna.

A space is a dict from a parameter name ``"<kind>.<config key>"`` (kind: ``dataset``,
``model`` or ``trainer``) to either a list of values (every one is tried by a grid, one is
drawn by the others) or a range ``{"low": a, "high": b, "log": false}`` (integers when both
ends are ints, else floats; random and Optuna only)::

    {"model.hidden_channels": [4, 8, 16], "trainer.lr": {"low": 1e-3, "high": 1e-2, "log": True}}

A sample is a dict of the same names with one value each; ``split`` turns it into the
config updates of each kind. Sampling is deterministic: random samples from a seed, and
Optuna's asks from a seed and the trials told so far (``optuna_ask`` rebuilds the study from
them every time, so the search needs no storage of its own and no Optuna server).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline import identity

KINDS = ("dataset", "model", "trainer")
STRATEGIES = ("grid", "random", "optuna")


class SpaceError(ValueError):
    """A search space, or a strategy's use of it, that cannot be sampled."""


@dataclass(frozen=True)
class Dimension:
    """One parameter of a space: a list of ``choices`` or a range ``low``..``high``."""

    name: str
    choices: tuple | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False

    @property
    def integer(self) -> bool:
        return self.choices is None and all(_is_int(v) for v in (self.low, self.high))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse(space: dict[str, Any]) -> list[Dimension]:
    """The dimensions of ``space`` in name order.

    Raises
    ------
    SpaceError
        Naming the parameter: a name not ``<kind>.<key>``, an empty list, a range without
        numeric ``low < high``, a log range that is not positive, an unknown range key.
    """
    if not isinstance(space, dict) or not space:
        raise SpaceError(f"search space {space!r} (expected a non-empty dict of '<kind>.<key>': values or range)")
    return [_dimension(name, space[name]) for name in sorted(space)]


def _dimension(name: str, spec: Any) -> Dimension:
    kind, _, key = name.partition(".")
    if kind not in KINDS or not key:
        raise SpaceError(f"search parameter {name!r} (expected '<kind>.<config key>' with kind one of {KINDS})")
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise SpaceError(f"search parameter {name!r} has an empty list of values (expected at least one)")
        return Dimension(name, choices=tuple(identity.plain(list(spec))))
    if not isinstance(spec, dict):
        raise SpaceError(
            f"search parameter {name!r} = {spec!r} (expected a list of values or {{'low', 'high', 'log'}})"
        )
    unknown = sorted(set(spec) - {"low", "high", "log"})
    if unknown:
        raise SpaceError(f"search parameter {name!r} has range key(s) {unknown} (expected low, high and log)")
    low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
    if not (_is_number(low) and _is_number(high)) or not low < high:
        raise SpaceError(f"search parameter {name!r} has range {low!r}..{high!r} (expected numbers with low < high)")
    if not isinstance(log, bool) or (log and low <= 0):
        raise SpaceError(f"search parameter {name!r}: log = {log!r} with low = {low!r} (expected log a bool, low > 0)")
    return Dimension(name, low=low, high=high, log=log)


def split(sample: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"model.a": 1, "trainer.b": 2}`` -> ``{"dataset": {}, "model": {"a": 1}, "trainer": {"b": 2}}``."""
    out: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
    for name, value in sample.items():
        kind, _, key = name.partition(".")
        out[kind][key] = value
    return out


def grid(space: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the values of ``space`` (parameters in name order, last varying fastest).

    Raises
    ------
    SpaceError
        If a parameter is a range (a grid needs a list of values).
    """
    dimensions = parse(space)
    ranges = [d.name for d in dimensions if d.choices is None]
    if ranges:
        raise SpaceError(f"a grid needs a list of values for every parameter; {ranges} are ranges")
    names = [d.name for d in dimensions]
    return [dict(zip(names, values)) for values in itertools.product(*(d.choices for d in dimensions))]


def random_samples(space: dict[str, Any], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` independent draws from ``space`` (uniform over lists and ranges, log-uniform for log ranges)."""
    if not _is_int(n) or n < 1:
        raise SpaceError(f"random search with n_trials = {n!r} (expected an int >= 1)")
    dimensions = parse(space)
    rng = np.random.default_rng(seed)
    return [{d.name: _draw(d, rng) for d in dimensions} for _ in range(n)]


def _draw(d: Dimension, rng: np.random.Generator) -> Any:
    if d.choices is not None:
        return d.choices[int(rng.integers(len(d.choices)))]
    if d.integer:
        if d.log:  # log-uniform over [low, high + 1), rounded down: each int weighed by its share
            return int(min(d.high, math.floor(math.exp(rng.uniform(math.log(d.low), math.log(d.high + 1))))))
        return int(rng.integers(d.low, d.high + 1))
    if d.log:
        return float(math.exp(rng.uniform(math.log(d.low), math.log(d.high))))
    return float(rng.uniform(d.low, d.high))


def optuna_distributions(space: dict[str, Any]) -> dict[str, Any]:
    """Optuna's distribution of every parameter of ``space``.

    Raises
    ------
    SpaceError
        If a list holds values Optuna cannot take as choices (lists or dicts).
    """
    from optuna import distributions

    out = {}
    for d in parse(space):
        if d.choices is not None:
            bad = [c for c in d.choices if isinstance(c, (list, dict))]
            if bad:
                raise SpaceError(
                    f"search parameter {d.name!r} has choices {bad} (Optuna takes None, bool, int, float, str)"
                )
            out[d.name] = distributions.CategoricalDistribution(list(d.choices))
        elif d.integer:
            out[d.name] = distributions.IntDistribution(d.low, d.high, log=d.log)
        else:
            out[d.name] = distributions.FloatDistribution(float(d.low), float(d.high), log=d.log)
    return out


def optuna_ask(
    space: dict[str, Any],
    told: Sequence[tuple[dict[str, Any], float | None]],
    n: int,
    seed: int,
    direction: str = "maximize",
) -> list[dict[str, Any]]:
    """The next ``n`` samples of a TPE search, given every trial so far and its value.

    Parameters
    ----------
    space
        The search space (see the module docstring).
    told
        ``(sample, value)`` of every earlier trial, in order; value None for a trial still
        being computed (Optuna then avoids its neighbourhood: constant liar), NaN for one
        that failed (e.g. its training diverged).
    n
        How many samples to ask for.
    seed
        Seed of the sampler; the study is rebuilt from ``told`` and sampled with
        ``seed + len(told)``, so equal inputs give equal samples.
    direction
        ``"maximize"`` or ``"minimize"`` the value.
    """
    import optuna
    from optuna.trial import TrialState, create_trial

    if direction not in ("maximize", "minimize"):
        raise SpaceError(f"direction {direction!r} (expected 'maximize' or 'minimize')")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = optuna_distributions(space)
    sampler = optuna.samplers.TPESampler(seed=int(seed) + len(told), constant_liar=True)
    study = optuna.create_study(direction=direction, sampler=sampler)  # in memory: no server, no files
    for sample, value in told:
        if value is None:
            trial = create_trial(params=sample, distributions=dists, state=TrialState.RUNNING)
        elif math.isnan(value):
            trial = create_trial(params=sample, distributions=dists, state=TrialState.FAIL)
        else:
            trial = create_trial(params=sample, distributions=dists, value=value)
        study.add_trial(trial)
    asked = []
    for _ in range(n):
        trial = study.ask(dists)
        asked.append({name: identity.plain(trial.params[name]) for name in dists})
    return asked
