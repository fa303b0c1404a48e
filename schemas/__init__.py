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

# in dependency order: a stage only references tables of the stages before it; "lab" is the
# linking module (``lab_module``) whose Session the scans hang under
STAGES = ("lab", "imaging", "spikes", "sysid", "modelling", "twins", "vision", "workers")
# stages declared only on request, after the core ones
OPTIONAL_STAGES = ("behavior",)
DEFAULT_PREFIX = "v1_"
DEFAULT_LAB_MODULE = "schemas.lab"

_active: dict = {"prefix": None, "connection": None, "optional": (), "lab": None}
# schema names this package activated a lab's own module under (a module the lab activated
# itself, under a name of its choosing, is left as it is)
_lab_schemas: set = set()

# schema names are quoted by DataJoint, but a prefix is also a word users type, a folder name in
# the stores and part of every table name: lower-case letters, digits and underscores only
_PREFIX = re.compile(r"[a-z][a-z0-9_]{0,31}")


class PrefixError(ValueError):
    """A schema prefix that is not a valid name."""


class SchemasMissing(LookupError):
    """A read-only look at a prefix whose schemas do not exist on the server."""


class LabModuleError(ValueError):
    """A linking module that cannot be imported or has no ``Session`` keyed by (animal_id, session)."""


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


def lab_module(name: str | None = None) -> ModuleType:
    """The linking module whose ``Session`` the scans hang under (imported, not activated).

    ``name``, else the one the last ``activate()`` used, else ``PIPELINE_LAB_MODULE``, else
    ``schemas.lab``. See ``schemas.lab`` for what a lab's own module provides.
    """
    name = name or _active["lab"] or os.environ.get("PIPELINE_LAB_MODULE") or DEFAULT_LAB_MODULE
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        raise LabModuleError(
            f"cannot import the lab module {name!r} ({error}; expected an importable module "
            "with a Session table, e.g. schemas.lab)"
        ) from None
    session = getattr(module, "Session", None)
    if not (isinstance(session, type) and issubclass(session, dj.Table)):
        raise LabModuleError(
            f"lab module {name!r} has no Session table (expected a DataJoint table keyed by animal_id, session)"
        )
    return module


def stage_names(optional: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The core stages and the ``optional`` ones (default: those activated), in dependency order."""
    return STAGES + tuple(_active["optional"] if optional is None else optional)


def stage_modules(optional: tuple[str, ...] | None = None) -> list[ModuleType]:
    """The stage modules of ``stage_names(optional)`` (imported, not activated), the lab module first."""
    return [
        lab_module() if stage == "lab" else importlib.import_module(f"schemas.{stage}")
        for stage in stage_names(optional)
    ]


def _check_session_key(module: ModuleType) -> None:
    key = sorted(module.Session.primary_key)
    if key != ["animal_id", "session"]:
        raise LabModuleError(
            f"{module.__name__}.Session has primary key {key} (expected exactly "
            "['animal_id', 'session'], the first two attributes of every scan key)"
        )


def activate(
    prefix: str | None = None,
    *,
    connection: dj.Connection | None = None,
    create: bool = True,
    optional: tuple[str, ...] | list[str] = (),
    lab: str | None = None,
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
    lab
        The linking module whose ``Session`` scans hang under (see ``lab_module``); a module
        whose schema is not activated yet is declared as ``<prefix>lab``.
    """
    from . import database

    unknown = sorted(set(optional) - set(OPTIONAL_STAGES))
    if unknown:
        raise ValueError(f"optional stage(s) {unknown} (expected some of: {list(OPTIONAL_STAGES)})")
    optional = tuple(stage for stage in OPTIONAL_STAGES if stage in optional)
    prefix = validate_prefix(default_prefix() if prefix is None else prefix)
    lab_linked = lab_module(lab)
    ours = lab_linked.schema.database is None or lab_linked.schema.database in _lab_schemas
    connection = connection or database.connect()
    existing = None if create else set(dj.list_schemas(connection=connection))
    if existing is not None and not any(prefix + stage in existing for stage in STAGES if stage != "lab"):
        found = sorted({name[: -len("imaging")] for name in existing if name.endswith("imaging")})
        raise SchemasMissing(
            f"no pipeline schemas with prefix {prefix!r} on this server; "
            + (f"prefixes found: {', '.join(found)}" if found else "no pipeline schemas found at all")
        )
    _active["lab"] = lab_linked.__name__
    for stage, module in zip(stage_names(optional), stage_modules(optional)):
        if stage == "lab" and not ours:  # the lab's own schema, activated by the lab
            _check_session_key(module)
            continue
        schema: dj.Schema = module.schema
        name = prefix + stage
        if schema.database == name and schema.connection is connection:
            continue
        if schema.database is not None:  # rebinding to another prefix or server
            schema.database = None
        if existing is not None and name not in existing:
            continue  # read-only: a stage this database does not have yet
        # imaging's `-> Session` resolves to the linking module's table
        links = {"Session": lab_linked.Session} if stage == "imaging" else None
        schema.activate(name, connection=connection, create_schema=create, create_tables=create, add_objects=links)
        if stage == "lab":
            _lab_schemas.add(name)
            _check_session_key(module)
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
    for module_stage, module in zip(stage_names(), stage_modules()):
        if stage and module_stage != stage:
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
    names = {prefix + stage for stage in STAGES + OPTIONAL_STAGES}
    for name in dj.list_schemas(connection=connection):
        if name.startswith(prefix) and name not in names:
            dj.Schema(name, connection=connection, create_schema=False).drop(prompt=False)
    for stage in reversed(STAGES + OPTIONAL_STAGES):
        name = prefix + stage
        schema = dj.Schema(name, connection=connection, create_schema=False) if _exists(name, connection) else None
        if schema is not None:
            schema.drop(prompt=False)


def _exists(name: str, connection: dj.Connection) -> bool:
    return name in dj.list_schemas(connection=connection)
