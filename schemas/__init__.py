"""The lab's DataJoint tables, one module per stage, declared by ``activate(prefix)``.

Importing this package touches no database. ``activate(prefix)`` connects (see
``schemas.database``), declares every stage's schema as ``<prefix><stage>`` and the jobs
tables of every auto-populated table (so that workers starting together never race to create
them). Activating again with another prefix or connection rebinds the tables to it.

Optional stages (``OPTIONAL_STAGES``, e.g. ``behavior``) are imported and declared only when
``activate(prefix, optional=[...])`` asks for them; until then ``tables()``, ``auto_tables()``
and ``table()`` do not know them, and the core never imports their modules.
"""

from __future__ import annotations

import importlib
import os
import re
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
STAGES = ("imaging", "spikes", "sysid", "modelling", "twins", "vision", "workers")
# stages declared only on request, after the core ones
OPTIONAL_STAGES = ("behavior",)
DEFAULT_PREFIX = "v1_"

_active: dict = {"prefix": None, "connection": None, "optional": ()}

# schema names are quoted by DataJoint, but a prefix is also a word users type, a folder name in
# the stores and part of every table name: lower-case letters, digits and underscores only
_PREFIX = re.compile(r"[a-z][a-z0-9_]{0,31}")


class PrefixError(ValueError):
    """A schema prefix that is not a valid name."""


class SchemasMissing(LookupError):
    """A read-only look at a prefix whose schemas do not exist on the server."""


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid schema-name prefix, else raise ``PrefixError`` saying why."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise PrefixError(
            f"schema prefix {prefix!r} is not valid (expected 1-32 characters: a lower-case letter, then "
            "lower-case letters, digits or underscores, e.g. 'v1_')"
        )
    return prefix


def default_prefix() -> str:
    """The schema prefix: ``PIPELINE_PREFIX`` or ``"v1_"``."""
    return os.environ.get("PIPELINE_PREFIX", DEFAULT_PREFIX)


def stage_modules(optional: tuple[str, ...] | None = None) -> list[ModuleType]:
    """The core stage modules and the ``optional`` ones (default: those activated), imported, not activated."""
    optional = _active["optional"] if optional is None else optional
    return [importlib.import_module(f"schemas.{stage}") for stage in STAGES + tuple(optional)]


def activate(
    prefix: str | None = None,
    *,
    connection: dj.Connection | None = None,
    create: bool = True,
    optional: tuple[str, ...] | list[str] = (),
) -> str:
    """Declare every stage's schema as ``<prefix><stage>`` on ``connection``; return the prefix.

    Parameters
    ----------
    prefix
        Schema-name prefix, default ``default_prefix()``; see ``validate_prefix``.
    connection
        A DataJoint connection, default the one ``schemas.database.connect()`` selects.
    create
        False for a read-only look: nothing is created on the server; ``SchemasMissing`` is
        raised when no stage's schema exists under ``prefix``, and stages whose schema does not
        exist (a stage added by a newer version of the pipeline) are left out of ``tables()``.
    optional
        Optional stages to declare too (names of ``OPTIONAL_STAGES``, e.g. ``["behavior"]``).
    """
    from . import database

    unknown = sorted(set(optional) - set(OPTIONAL_STAGES))
    if unknown:
        raise ValueError(f"optional stage(s) {unknown} (expected some of: {list(OPTIONAL_STAGES)})")
    optional = tuple(stage for stage in OPTIONAL_STAGES if stage in optional)
    prefix = validate_prefix(default_prefix() if prefix is None else prefix)
    connection = connection or database.connect()
    existing = None if create else set(dj.list_schemas(connection=connection))
    if existing is not None and not any(prefix + stage in existing for stage in STAGES):
        found = sorted({name[: -len(stage)] for name in existing for stage in STAGES[:1] if name.endswith(stage)})
        raise SchemasMissing(
            f"no pipeline schemas with prefix {prefix!r} on this server; "
            + (f"prefixes found: {', '.join(found)}" if found else "no pipeline schemas found at all")
        )
    for module in stage_modules(optional):
        schema: dj.Schema = module.schema
        name = prefix + module.__name__.rsplit(".", 1)[1]
        if schema.database == name and schema.connection is connection:
            continue
        if schema.database is not None:  # rebinding to another prefix or server
            schema.database = None
        if existing is not None and name not in existing:
            continue  # read-only: a stage this database does not have yet
        schema.activate(name, connection=connection, create_schema=create, create_tables=create)
    _active.update(prefix=prefix, connection=connection, optional=optional)
    if create:
        for table in auto_tables():
            jobs = table().jobs
            if not jobs.is_declared:
                jobs.declare()
    return prefix


def active_prefix() -> str | None:
    """The prefix of the last ``activate()``, or None."""
    return _active["prefix"]


def tables() -> list[type]:
    """Every master table class of every stage, in dependency order."""
    out = []
    for module in stage_modules():
        if module.schema.database is None:  # not activated (read-only look at an older database)
            continue
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
    """Drop every schema under ``prefix``, optional stages included (tests and throwaway demos).

    Schemas of extra modules (a lab's own tables, ``pipeline worker --module``) depend on the
    stages and go first; then the stages, last to first (optional stages before the core).
    """
    stage_names = {prefix + stage for stage in STAGES + OPTIONAL_STAGES}
    for name in dj.list_schemas(connection=connection):
        if name.startswith(prefix) and name not in stage_names:
            dj.Schema(name, connection=connection, create_schema=False).drop(prompt=False)
    for stage in reversed(STAGES + OPTIONAL_STAGES):
        name = prefix + stage
        schema = dj.Schema(name, connection=connection, create_schema=False) if _exists(name, connection) else None
        if schema is not None:
            schema.drop(prompt=False)


def _exists(name: str, connection: dj.Connection) -> bool:
    return name in dj.list_schemas(connection=connection)
