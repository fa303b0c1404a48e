"""Which tables workers populate: the stages' auto-populated tables and those of a lab's own modules."""

from __future__ import annotations

import importlib
import time
from types import ModuleType
from typing import Sequence

import datajoint as dj

from ..restrictions import restrictions_per_table


class SelectionError(ValueError):
    """A table or schema module that workers were asked for and that does not exist."""


def activate_modules(names: Sequence[str], prefix: str, connection: dj.Connection) -> list[ModuleType]:
    """Import and activate extra schema modules; return them.

    A module is a DataJoint schema module like the stages: a module-level ``schema =
    dj.Schema()`` and tables decorated with ``@schema``. It is activated as
    ``<prefix><STAGE>`` where ``STAGE`` is the module's ``STAGE`` attribute or the last part of
    its name, after the stages it may reference.
    """
    modules = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise SelectionError(f"cannot import schema module {name!r}: {error}") from None
        module_schema = getattr(module, "schema", None)
        if not isinstance(module_schema, dj.Schema):
            raise SelectionError(f"module {name!r} has no `schema = dj.Schema()` (expected a schema module)")
        database = prefix + getattr(module, "STAGE", name.rsplit(".", 1)[-1])
        if module_schema.database != database or module_schema.connection is not connection:
            if module_schema.database is not None:
                module_schema.database = None
            _retry_race(lambda: module_schema.activate(database, connection=connection))
        modules.append(module)
    return modules


def module_auto_tables(modules: Sequence[ModuleType]) -> list[type]:
    """The Imported/Computed tables of extra modules, in declaration (dependency) order."""
    out = []
    for module in modules:
        for cls, _context in module.schema.declare_list:
            if issubclass(cls, (dj.Imported, dj.Computed)):
                out.append(cls)
    return out


def select_tables(names: Sequence[str] | None, modules: Sequence[ModuleType] = ()) -> list[type]:
    """Auto-populated tables in dependency order, filtered by class name (or ``stage.Class``)."""
    import schemas

    candidates = schemas.auto_tables() + module_auto_tables(modules)
    if not names:
        return candidates
    chosen = []
    for name in names:
        stage, _, cls_name = name.rpartition(".")
        found = [c for c in candidates if c.__name__ == cls_name and (not stage or c.__module__.endswith(stage))]
        if not found:
            known = ", ".join(c.__name__ for c in candidates)
            raise SelectionError(f"no auto-populated table {name!r} (expected one of: {known})")
        chosen.extend(c for c in found if c not in chosen)
    return [c for c in candidates if c in chosen]  # keep dependency order


def _retry_race(action, attempts: int = 5):
    """Run an idempotent action that concurrent workers may race for, retrying the race.

    The races: two processes declaring one jobs table (PostgreSQL DuplicateTable), and two
    processes refreshing one queue (a MariaDB/MySQL deadlock, error 1213, or PostgreSQL's).
    """
    for attempt in range(attempts):
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - re-raised below unless it is the race
            text = str(error).lower()
            race = "already exists" in text or "duplicate" in text or "deadlock" in text
            if attempt == attempts - 1 or not race:
                raise
            time.sleep(0.05 * (attempt + 1))


def ensure_jobs_tables(tables: Sequence[type]) -> int:
    """Create the jobs tables that do not exist yet; return how many were created."""
    created = 0
    for cls in tables:
        jobs = _retry_race(lambda: cls().jobs)
        if not jobs.is_declared:
            _retry_race(jobs.declare)
            created += 1
    return created


# ---------------------------------------------------------------------------------------------
# the controller: queues and recovery of dead workers' jobs
# ---------------------------------------------------------------------------------------------


def activate_with_modules(prefix: str | None, module_names: Sequence[str]) -> tuple[str, list[ModuleType]]:
    """Activate the stages under ``prefix`` and the extra schema modules; return both."""
    import schemas

    prefix = schemas.activate(prefix)
    from .registry import Worker

    return prefix, activate_modules(module_names, prefix, Worker.connection)


def table_scopes(tables: Sequence[type], restrictions: Sequence = (), restrict: Sequence[str] = ()) -> dict[type, list]:
    """Per table, the restrictions its populate takes; tables the text restriction excludes are left out.

    ``restrictions`` are DataJoint restrictions (the Python API), applied to every table;
    ``restrict`` are ``attr=value`` texts (the command line), typed by each table's heading. A
    table that lacks an attribute of ``restrict`` cannot match it and is not worked on; an
    attribute that no table has is an error (``RestrictionError``).
    """
    typed = restrictions_per_table(tables, restrict)
    return {cls: [*restrictions, *([typed[cls]] if typed[cls] else [])] for cls in tables if cls in typed}
