"""The lab's DataJoint tables, one module per stage, declared by ``activate(prefix)``.

Importing this package touches no database. ``activate(prefix)`` connects (see
``schemas.database``), declares every stage's schema as ``<prefix><stage>`` and the jobs
tables of every auto-populated table (so that workers starting together never race to create
them). Activating again with another prefix or connection rebinds the tables to it.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

# the embedded default database needs no datajoint.json: do not warn that there is none
warnings.filterwarnings("ignore", message="No datajoint.json found")
import logging  # noqa: E402

import datajoint as dj  # noqa: E402


class _JobsTableTypeNotice(logging.Filter):
    """Drop DataJoint's notice about native types in the jobs tables it generates itself.

    A jobs table's definition copies its target's key attributes with their native SQL types
    (``smallint`` for ``int16``), and declaring it logs a portability warning per attribute on
    every activation: noise the user can do nothing about.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "Consider using a core DataJoint type" not in record.getMessage()


logging.getLogger("datajoint").addFilter(_JobsTableTypeNotice())

# in dependency order: a stage only references tables of the stages before it
STAGES = ("imaging", "spikes", "sysid", "twins", "workers")
DEFAULT_PREFIX = "v1_"

_active: dict = {"prefix": None, "connection": None}


def default_prefix() -> str:
    """The schema prefix: ``PIPELINE_PREFIX`` or ``"v1_"``."""
    return os.environ.get("PIPELINE_PREFIX", DEFAULT_PREFIX)


def stage_modules() -> list[ModuleType]:
    """The stage modules (imported, not activated)."""
    return [importlib.import_module(f"schemas.{stage}") for stage in STAGES]


def activate(prefix: str | None = None, *, connection: dj.Connection | None = None) -> str:
    """Declare every stage's schema as ``<prefix><stage>`` on ``connection``; return the prefix.

    Parameters
    ----------
    prefix
        Schema-name prefix, default ``default_prefix()``.
    connection
        A DataJoint connection, default the one ``schemas.database.connect()`` selects.
    """
    from . import database

    prefix = default_prefix() if prefix is None else prefix
    connection = connection or database.connect()
    for module in stage_modules():
        schema: dj.Schema = module.schema
        name = prefix + module.__name__.rsplit(".", 1)[1]
        if schema.database == name and schema.connection is connection:
            continue
        if schema.database is not None:  # rebinding to another prefix or server
            schema.database = None
        schema.activate(name, connection=connection)
    _active.update(prefix=prefix, connection=connection)
    for table in auto_tables():
        jobs = table().jobs
        if not jobs.is_declared:
            jobs.declare()
    return prefix


def active_prefix() -> str | None:
    """The prefix of the last ``activate()``, or None."""
    return _active["prefix"]


def require_active() -> None:
    if _active["prefix"] is None:
        raise RuntimeError("schemas are not activated: call schemas.activate(prefix) first")


def tables() -> list[type]:
    """Every master table class of every stage, in dependency order."""
    out = []
    for module in stage_modules():
        for cls, _context in module.schema.declare_list:
            out.append(cls)
    return out


def auto_tables() -> list[type]:
    """The Imported and Computed tables that ``populate()`` fills, in dependency order."""
    return [cls for cls in tables() if issubclass(cls, (dj.Imported, dj.Computed))]


def table(name: str) -> type:
    """A table class by its class name (``"Denoised"``) or ``stage.Class`` name."""
    stage, _, cls_name = name.rpartition(".")
    for module in stage_modules():
        if stage and module.__name__.rsplit(".", 1)[1] != stage:
            continue
        cls = getattr(module, cls_name, None)
        if isinstance(cls, type) and issubclass(cls, dj.Table):
            return cls
    known = ", ".join(cls.__name__ for cls in tables())
    raise KeyError(f"no table {name!r} (expected one of: {known})")


def drop_all(prefix: str, connection: dj.Connection) -> None:
    """Drop every stage's schema under ``prefix`` (tests and throwaway demos)."""
    for module in reversed(stage_modules()):
        name = prefix + module.__name__.rsplit(".", 1)[1]
        schema = dj.Schema(name, connection=connection, create_schema=False) if _exists(name, connection) else None
        if schema is not None:
            schema.drop(prompt=False)


def _exists(name: str, connection: dj.Connection) -> bool:
    return name in dj.list_schemas(connection=connection)
