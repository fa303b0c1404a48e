"""Parameter-set tables: one row per (builder, normalized config), keyed by its content hash.

Every parameter table of the pipeline has the same shape::

    <name>_hash : char(32)      # config_hash(config, builder=builder)
    ---
    builder     : varchar(128)  # the function that takes the config
    config      : json          # the normalized config (defaults merged, types kept)
    note = ""   : varchar(255)

and declares the kind of builder it holds as the class attribute ``builder_kind`` (see
``pipeline.identity``). ``insert_config`` is the one way to add a row: the builder must
resolve and take every key, so a bad config is an error at insert time, never at populate.
"""

from __future__ import annotations

from typing import Any

import datajoint as dj

from pipeline import identity


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
    config = row["config"]
    if isinstance(config, str):  # some backends hand json back as text
        import json

        config = json.loads(config)
    return identity.resolve(table.builder_kind, row["builder"]), config
