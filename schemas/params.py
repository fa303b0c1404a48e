"""Parameter-set tables: one row per (builder, normalized config), keyed by its content hash.

Every parameter table of the pipeline has the same shape::

    <name>_hash : char(32)      # config_hash(config, builder=builder)
    ---
    builder     : varchar(128)  # the function that takes the config
    config      : json          # the normalized config (defaults merged, types kept)
    note = ""   : varchar(255)

and declares the kind of builder it holds as the class attribute ``builder_kind`` (see
``pipeline.identity``). ``insert_config`` is the way to add a row: the builder must resolve,
take every key and accept every value (its validation hook), so a bad config is an error at
insert time, never at populate. Tables that mix in :class:`ConfigTable` check rows inserted
directly (``Table.insert1``) the same way.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import datajoint as dj
import numpy as np

from pipeline import identity

from . import values


def config_definition(name: str, comment: str) -> str:
    """The definition of a parameter-set table whose key is ``<name>_hash``."""
    return f"""
    # {comment}
    {name}_hash : char(32)      # content hash of builder and normalized config
    ---
    builder     : varchar(128)  # function that takes the config
    config      : json          # normalized config: defaults merged, types kept
    note = ""   : varchar(255)
    """


def row_dicts(table: dj.Table, rows: Any) -> list[dict[str, Any]]:
    """The rows of an ``insert`` call as dicts, whatever form DataJoint accepts them in.

    Dicts stay dicts; numpy records and sequences are named by the table's heading; a query
    expression is fetched, a DataFrame or CSV file read. Used by tables that check rows before
    inserting them (see :func:`checked_insert`).
    """
    if isinstance(rows, type) and issubclass(rows, dj.expression.QueryExpression):
        rows = rows()
    if isinstance(rows, dj.expression.QueryExpression):
        return rows.to_dicts()
    if isinstance(rows, Path):
        with open(rows, newline="") as handle:
            return list(csv.DictReader(handle))
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame, as DataJoint reads it
        unnamed = len(rows.index.names) == 1 and not rows.index.names[0]
        return rows.reset_index(drop=unnamed).to_dict("records")
    names = list(table.heading.names)
    out = []
    for row in rows:
        if isinstance(row, Mapping):
            out.append(dict(row))
        elif isinstance(row, np.void):
            out.append({name: row[name] for name in row.dtype.names})
        else:
            out.append(dict(zip(names, row)))
    return out


def checked_rows(table: dj.Table, rows: Any, check: Callable[[dict[str, Any]], None]) -> Any:
    """``rows`` of an ``insert`` call, to hand on to DataJoint once ``check(row)`` passed for each.

    ``check`` raises for a bad row, so nothing is inserted if any row fails. The rows are handed
    on in the form they came in (a query expression stays an insert-from-select), except a
    one-pass iterator (a generator), which is handed on as the dicts it was read into.
    """
    checked = row_dicts(table, rows)
    for row in checked:
        check(row)
    return checked if isinstance(rows, Iterator) else rows


class ConfigTable:
    """Mixin of parameter-set tables: every inserted row is checked as ``insert_config`` checks it.

    A row inserted directly (``ModelConfig.insert1({...})``) must name a builder that resolves,
    hold the config that ``identity.normalize`` makes of it (defaults merged, types kept,
    accepted by the builder's validation hook) and the hash of that config; anything else is an
    error before the row reaches the database, so populate never meets a config it cannot run.
    Mix it in before ``dj.Lookup``: ``class ModelConfig(params.ConfigTable, dj.Lookup)``.
    """

    builder_kind: str

    def insert(self, rows, **kwargs) -> None:
        super().insert(checked_rows(self, rows, lambda row: check_row(self, row)), **kwargs)


def check_row(table, row: Mapping[str, Any]) -> None:
    """Raise unless ``row`` holds a resolvable builder, its normalized config and that config's hash.

    Raises
    ------
    pipeline.identity.UnknownBuilderError
        The builder does not resolve.
    pipeline.identity.ConfigError
        The config is not the builder's normalized config, or the hash is not its hash.
    """
    builder, config = row.get("builder"), values.json_value(row.get("config"))
    config_hash, normalized = make_config(table, builder, config)
    if identity.config_hash(identity.plain(config or {}), builder=builder) != config_hash:
        raise identity.ConfigError(
            f"{type(table).__name__} row with builder {builder!r} has config {config!r}, which is not normalized "
            f"(expected {normalized!r}; use params.insert_config)"
        )
    attr = hash_attribute(table)
    if row.get(attr) != config_hash:
        raise identity.ConfigError(
            f"{type(table).__name__}.{attr} = {row.get(attr)!r} is not the hash of builder {builder!r} and its "
            f"config (expected {config_hash!r}; use params.insert_config)"
        )


def hash_attribute(table: type[dj.Table] | dj.Table) -> str:
    (attr,) = [a for a in table.primary_key if a.endswith("_hash")]
    return attr


def make_config(table, builder: str, config: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Resolve ``builder`` for ``table``'s kind and normalize ``config``: (hash, config)."""
    fn = identity.resolve(table.builder_kind, builder)
    normalized = identity.normalize(fn, config, name=f"{table.builder_kind} builder {builder!r}")
    return identity.config_hash(normalized, builder=builder), normalized


def insert_config(table, builder: str, config: dict[str, Any] | None = None, note: str = "") -> dict[str, str]:
    """Insert a parameter set (a no-op if an equal one exists) and return its key."""
    config_hash, normalized = make_config(table, builder, config)
    key = {hash_attribute(table): config_hash}
    table.insert1({**key, "builder": builder, "config": normalized, "note": note}, skip_duplicates=True)
    return key


def load_config(table, key: dict) -> tuple[Any, dict[str, Any]]:
    """The builder function and normalized config of the parameter set at ``key``."""
    row = (table & key).fetch1()
    config = values.json_value(row["config"])
    return identity.resolve(table.builder_kind, row["builder"]), config
