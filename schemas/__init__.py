"""The lab's DataJoint tables, one module per stage, declared by ``activate(prefix)``.

Importing this package touches no database. ``activate(prefix)`` connects (see
``schemas.database``), declares every stage's schema as ``<prefix><stage>`` and the jobs
tables of every auto-populated table (so that workers starting together never race to create
them). Activating again with another prefix or connection rebinds the tables to it.
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
STAGES = ("lab", "imaging", "spikes", "sysid", "workers")
DEFAULT_PREFIX = "v1_"
DEFAULT_LAB_MODULE = "schemas.lab"

_active: dict = {"prefix": None, "connection": None, "lab": None}
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
        raise LabModuleError(f"cannot import the lab module {name!r} ({error}; expected an importable module "
                             "with a Session table, e.g. schemas.lab)") from None
    session = getattr(module, "Session", None)
    if not (isinstance(session, type) and issubclass(session, dj.Table)):
        raise LabModuleError(f"lab module {name!r} has no Session table (expected a DataJoint table keyed by "
                             "animal_id, session)")
    return module


def stage_modules() -> list[ModuleType]:
    """The stage modules (imported, not activated), the lab module first."""
    return [lab_module() if stage == "lab" else importlib.import_module(f"schemas.{stage}") for stage in STAGES]


def _check_session_key(module: ModuleType) -> None:
    key = sorted(module.Session.primary_key)
    if key != ["animal_id", "session"]:
        raise LabModuleError(f"{module.__name__}.Session has primary key {key} (expected exactly "
                             "['animal_id', 'session'], the first two attributes of every scan key)")


def activate(
    prefix: str | None = None, *, connection: dj.Connection | None = None, create: bool = True, lab: str | None = None
) -> str:
    """Declare every stage's schema as ``<prefix><stage>`` on ``connection``; return the prefix.

    Parameters
    ----------
    prefix
        Schema-name prefix, default ``default_prefix()``; see ``validate_prefix``.
    connection
        A DataJoint connection, default the one ``schemas.database.connect()`` selects.
    create
        False for a read-only look: nothing is created on the server, and ``SchemasMissing`` is
        raised when a stage's schema does not exist under ``prefix``.
    lab
        The linking module whose ``Session`` scans hang under (see ``lab_module``); a module
        whose schema is not activated yet is declared as ``<prefix>lab``.
    """
    from . import database

    prefix = validate_prefix(default_prefix() if prefix is None else prefix)
    lab_linked = lab_module(lab)
    ours = lab_linked.schema.database is None or lab_linked.schema.database in _lab_schemas
    stages = [stage for stage in STAGES if stage != "lab" or ours]
    connection = connection or database.connect()
    if not create:
        existing = set(dj.list_schemas(connection=connection))
        missing = [prefix + stage for stage in stages if prefix + stage not in existing]
        if missing:
            found = sorted({name[: -len(stage)] for name in existing for stage in ("imaging",) if name.endswith(stage)})
            raise SchemasMissing(
                f"no pipeline schemas with prefix {prefix!r} on this server (missing: {', '.join(missing)}); "
                + (f"prefixes found: {', '.join(found)}" if found else "no pipeline schemas found at all")
            )
    _active["lab"] = lab_linked.__name__
    for stage, module in zip(STAGES, stage_modules()):
        if stage == "lab" and not ours:  # the lab's own schema, activated by the lab
            _check_session_key(module)
            continue
        schema: dj.Schema = module.schema
        name = prefix + stage
        if schema.database == name and schema.connection is connection:
            continue
        if schema.database is not None:  # rebinding to another prefix or server
            schema.database = None
        # imaging's `-> Session` resolves to the linking module's table
        links = {"Session": lab_linked.Session} if stage == "imaging" else None
        schema.activate(name, connection=connection, create_schema=create, create_tables=create, add_objects=links)
        if stage == "lab":
            _lab_schemas.add(name)
            _check_session_key(module)
    _active.update(prefix=prefix, connection=connection)
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
        for cls, _context in module.schema.declare_list:
            out.append(cls)
    return out


def auto_tables() -> list[type]:
    """The Imported and Computed tables that ``populate()`` fills, in dependency order."""
    return [cls for cls in tables() if issubclass(cls, (dj.Imported, dj.Computed))]


def table(name: str) -> type:
    """A table class by its class name (``"Denoised"``) or ``stage.Class`` name."""
    stage, _, cls_name = name.rpartition(".")
    for module_stage, module in zip(STAGES, stage_modules()):
        if stage and module_stage != stage:
            continue
        cls = getattr(module, cls_name, None)
        if isinstance(cls, type) and issubclass(cls, dj.Table):
            return cls
    known = ", ".join(cls.__name__ for cls in tables())
    raise KeyError(f"no table {name!r} (expected one of: {known})")


def drop_all(prefix: str, connection: dj.Connection) -> None:
    """Drop every stage's schema under ``prefix`` (tests and throwaway demos)."""
    for stage in reversed(STAGES):
        name = prefix + stage
        schema = dj.Schema(name, connection=connection, create_schema=False) if _exists(name, connection) else None
        if schema is not None:
            schema.drop(prompt=False)


def _exists(name: str, connection: dj.Connection) -> bool:
    return name in dj.list_schemas(connection=connection)
