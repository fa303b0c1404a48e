"""Canonical, typed identity of parameter sets and the registry of builders that take them.

Every parameter set in the lab's pipeline (a denoising setting, a spike method, a dataset,
model or trainer config) is a pair: the name of a function (its *builder*) and the keyword
arguments it is called with. ``normalize`` merges the builder's defaults, rejects keys it does
not take and coerces values to the builder's declared types; ``config_hash`` gives the same
hash to equal configs however they were written, and different hashes to configs that differ
in type (``1`` vs ``"1"`` vs ``True``, ``None`` vs ``"None"``, ``{}`` vs ``[]``).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import typing
from typing import Any, Callable

# Modules whose import registers the lab's builders of each kind. Resolving a short name
# imports them first, so that a worker process knows every builder without configuration.
DEFAULT_MODULES: dict[str, tuple[str, ...]] = {
    "imaging": ("pipeline.imaging",),
    "spikes": ("pipeline.spikes",),
    "dataset": ("pipeline.sysid.data", "pipeline.sysid.video"),
    "model": ("pipeline.sysid.models",),
    "trainer": ("pipeline.sysid.training", "pipeline.sysid.kshot"),
    "response": ("pipeline.sysid.responses",),
    "stimulus_set": ("pipeline.vision.stimuli",),
    "vision_dataset": ("pipeline.vision.data",),
    "classifier": ("pipeline.vision.models",),
    "vision_trainer": ("pipeline.vision.training",),
    # the optional behaviour stage: imported only when a pose builder is resolved
    "pose_data": ("pipeline.behavior.data",),
    "pose_model": ("pipeline.behavior.estimators",),
    "insilico": ("pipeline.insilico",),
    "kshot": ("pipeline.sysid.kshot",),
}

_REGISTRY: dict[str, dict[str, Callable]] = {}
# builder function -> its validation hook; keyed by function so that a builder resolved by a
# dotted path is validated exactly like one resolved by its short name
_VALIDATORS: dict[Callable, Callable[[dict[str, Any]], None]] = {}

Validator = Callable[[dict[str, Any]], None]


class ConfigError(ValueError):
    """A parameter set that its builder cannot take."""


class UnknownBuilderError(LookupError):
    """A builder name that does not resolve."""


def register(
    kind: str, name: str | None = None, *, validate: Validator | None = None
) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as a builder of ``kind`` under ``name`` (default: its name).

    Parameters
    ----------
    kind
        ``"model"``, ``"trainer"``, ``"dataset"``, ``"imaging"``, ...
    name
        The short name configs use; default the function's name.
    validate
        The builder's validation hook: called by :func:`normalize` with the full, typed config;
        raises ``ValueError`` naming a value the builder cannot take and what it expects
        (e.g. ``layers = -1 (expected >= 1)``), so that a bad config fails when it is
        inserted, not when a worker builds it. :func:`bounds` makes the common one.
    """

    def decorate(fn: Callable) -> Callable:
        key = name or fn.__name__
        table = _REGISTRY.setdefault(kind, {})
        if key in table and table[key] is not fn:
            raise ValueError(f"{kind} builder {key!r} is registered twice ({table[key]!r} and {fn!r})")
        table[key] = fn
        if validate is not None:
            _VALIDATORS[fn] = validate
        return fn

    return decorate


def bounds(
    *,
    minimum: dict[str, float] | None = None,
    above: dict[str, float] | None = None,
    maximum: dict[str, float] | None = None,
) -> Validator:
    """A validation hook that checks numeric config values against limits.

    Parameters
    ----------
    minimum
        ``{key: low}``: the value must be >= low.
    above
        ``{key: low}``: the value must be > low (a learning rate, a width).
    maximum
        ``{key: high}``: the value must be <= high.

    Examples
    --------
    >>> check = bounds(minimum={"layers": 1})
    >>> check({"layers": 0})
    Traceback (most recent call last):
    ...
    ValueError: layers = 0 (expected >= 1)
    """
    rules = [(k, ">=", v) for k, v in (minimum or {}).items()]
    rules += [(k, ">", v) for k, v in (above or {}).items()]
    rules += [(k, "<=", v) for k, v in (maximum or {}).items()]

    def check(config: dict[str, Any]) -> None:
        for key, op, limit in rules:
            value = config.get(key)
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # types are normalize's job; None means "not used"
            ok = math.isfinite(value) and (
                value >= limit if op == ">=" else value > limit if op == ">" else value <= limit
            )
            if not ok:
                raise ValueError(f"{key} = {value!r} (expected {op} {limit!r})")

    return check


def registered(kind: str) -> list[str]:
    """Names of the builders of ``kind`` known after importing the default modules."""
    _import_defaults(kind)
    return sorted(_REGISTRY.get(kind, {}))


def _import_defaults(kind: str) -> None:
    for module in DEFAULT_MODULES.get(kind, ()):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            # a stage that is not installed has no builders; any other import error is a bug
            if error.name is None or not module.startswith(error.name):
                raise


def resolve(kind: str, name: str) -> Callable:
    """The builder of ``kind`` called ``name``.

    ``name`` is a registered short name (``"cnn_factorized"``) or a dotted import path to a
    function of the user's own package (``"mylab.models.my_model"``).

    Raises
    ------
    UnknownBuilderError
        If the name does not resolve, naming what is known.
    """
    if not isinstance(name, str) or not name:
        raise UnknownBuilderError(f"{kind} builder name must be a non-empty string, got {name!r}")
    _import_defaults(kind)
    table = _REGISTRY.get(kind, {})
    if name in table:
        return table[name]
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise UnknownBuilderError(
                f"{kind} builder {name!r} does not resolve: cannot import {module_name!r} ({error})"
            ) from None
        fn = getattr(module, attr, None)
        if callable(fn):
            return fn
        raise UnknownBuilderError(f"{kind} builder {name!r} does not resolve: {module_name!r} has no function {attr!r}")
    known = ", ".join(sorted(table)) or "none registered"
    raise UnknownBuilderError(f"{kind} builder {name!r} does not resolve (expected one of: {known}, or a dotted path)")


def config_parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    """The configurable parameters of a builder: its keyword-only parameters."""
    return {name: p for name, p in inspect.signature(fn).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def normalize(fn: Callable, config: dict[str, Any] | None = None, *, name: str | None = None) -> dict[str, Any]:
    """The full, typed config that ``fn`` is called with.

    The builder's keyword-only parameters are its config. Defaults are merged in; a key it
    does not take, or a required key that is missing, is an error; values are coerced to the
    type of the default (or the annotation) where that loses nothing (``1`` -> ``1.0`` for a
    float, a tuple -> a list), and rejected where it would (``"1"`` for an int). Last, the
    builder's validation hook (``register(..., validate=)``) checks the values.

    Raises
    ------
    ConfigError
        An unknown or missing key, a value of the wrong type, or one the hook rejects.

    Returns
    -------
    dict
        Keys in sorted order, values plain JSON types.
    """
    label = name or getattr(fn, "__name__", repr(fn))
    config = dict(config or {})
    params = config_parameters(fn)
    unknown = sorted(set(config) - set(params))
    if unknown:
        raise ConfigError(
            f"{label} does not take config key(s) {unknown} (expected some of: {sorted(params) or 'none'})"
        )
    hints = _type_hints(fn)
    out: dict[str, Any] = {}
    for key, p in params.items():
        if key in config:
            value = config[key]
        elif p.default is not inspect.Parameter.empty:
            value = p.default
        else:
            raise ConfigError(f"{label} needs config key {key!r} (no default)")
        out[key] = _coerce(plain(value), p.default, hints.get(key), f"{label}.{key}")
    out = dict(sorted(out.items()))
    check = _VALIDATORS.get(fn)
    if check is not None:
        try:
            check(out)
        except ConfigError:
            raise
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{label}: {error}") from None
    return out


def _type_hints(fn: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to the defaults' types
        return {}


def _coerce(value: Any, default: Any, hint: Any, label: str) -> Any:
    expected = _expected_type(default, hint)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is not None and value is not None and not _matches(value, expected):
        raise ConfigError(f"{label} = {value!r} has type {type(value).__name__} (expected {expected.__name__})")
    return value


def _expected_type(default: Any, hint: Any) -> type | None:
    if hint in (int, float, str, bool, list, dict):
        return hint
    origin = typing.get_origin(hint)
    if origin in (list, dict, tuple):
        return list if origin is tuple else origin
    if default is not None and default is not inspect.Parameter.empty and type(default) in (int, float, str, bool):
        return type(default)
    return None


def _matches(value: Any, expected: type) -> bool:
    if expected is float:
        return isinstance(value, float)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def plain(value: Any) -> Any:
    """``value`` as plain JSON types: numpy scalars to Python, tuples to lists, keys to str."""
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"config keys must be strings, got {bad!r}")
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "shape", None) == ():
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"config value {value!r} of type {type(value).__name__} is not a plain JSON value")


def _tagged(value: Any) -> Any:
    # every value carries its type, so 1, 1.0, "1" and True never share an encoding
    if value is None:
        return ["none"]
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", str(value)]
    if isinstance(value, float):
        if math.isnan(value):
            return ["float", "nan"]
        return ["float", repr(value + 0.0)]  # -0.0 + 0.0 == 0.0: one zero
    if isinstance(value, str):
        return ["str", value]
    if isinstance(value, list):
        return ["list", [_tagged(v) for v in value]]
    if isinstance(value, dict):
        return ["dict", [[k, _tagged(value[k])] for k in sorted(value)]]
    raise ConfigError(f"cannot hash {value!r} of type {type(value).__name__}")


def config_hash(config: dict[str, Any], *, builder: str | None = None) -> str:
    """32-hex-digit content hash of a (normalized) config, optionally with its builder name."""
    payload = json.dumps(["v1", builder, _tagged(plain(config))], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]
