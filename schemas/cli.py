"""The ``pipeline`` command: the database, the demo, workers, status, jobs, reproduce.

Every subcommand has ``--help``. Restrictions on the command line are ``attr=value`` pairs,
parsed into dicts and handed to DataJoint, never pasted into SQL.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Any, Sequence

# modules that add subcommands with add_commands(subparsers)
COMMAND_MODULES = ("schemas.workers", "schemas.sysid", "schemas.demo")


def parse_restrictions(pairs: Sequence[str]) -> dict[str, Any]:
    """``["animal_id=3", "note=x y"]`` -> ``{"animal_id": 3, "note": "x y"}``.

    Values that read as integers or floats become numbers; everything else stays a string.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        attr, sep, value = pair.partition("=")
        attr = attr.strip()
        if not sep or not attr.isidentifier():
            raise SystemExit(f"pipeline: restriction {pair!r} is not of the form attr=value")
        out[attr] = _number(value)
    return out


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _db(args: argparse.Namespace) -> int:
    from . import database

    action = args.action
    if action == "stop":
        if database.user_gave_host():
            print("pipeline db: a lab server is configured (DJ_HOST/datajoint.json); nothing to stop here")
            return 0
        stopped = database.stop_embedded()
        print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
        return 0
    if action == "start" and not database.user_gave_host():
        before = database.embedded_status()["running"]
        database.start_embedded()
        if before:
            print("embedded PostgreSQL already running")
    where = database.target(start=action == "start")
    if where.embedded and action == "status" and not database.embedded_status()["running"]:
        print(f"embedded PostgreSQL: stopped (data in {database.home() / 'pgdata'}); `pipeline db start` starts it")
        return 1
    connection = database.connect()
    version = connection.query("SELECT version()").fetchone()[0].split(",")[0]
    state = "running" if where.embedded else "reachable"
    print(f"{where.describe()}: {state}")
    print(f"  backend  {where.backend}")
    print(f"  server   {version}")
    print(f"  home     {database.home()}")
    if where.embedded:
        print(f"  pid      {database.embedded_status()['pid']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Two-photon scans to trained models of visual cortex, on DataJoint.",
    )
    parser.add_argument(
        "--prefix",
        default=None,
        help="schema-name prefix (default: $PIPELINE_PREFIX or 'v1_')",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    db = sub.add_parser("db", help="the database: status, start, stop", description=(
        "Where the pipeline connects: the lab server from DataJoint's settings (DJ_HOST, "
        "datajoint.json, .secrets/) or else the embedded PostgreSQL server in $PIPELINE_HOME."))
    db.add_argument("action", choices=["status", "start", "stop"], help="what to do")
    db.set_defaults(func=_db)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name == name:
                continue
            raise
        add = getattr(module, "add_commands", None)
        if add is not None:
            add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="No datajoint.json found")
    warnings.filterwarnings("ignore", message=".*MariaDB is not officially supported.*")
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import datajoint as dj

    # DataJoint's INFO lines ("connected to ...") would drown the command's own output
    dj.config["loglevel"] = os.environ.get("DJ_LOG_LEVEL", "WARNING")
    from .database import DatabaseUnavailable

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DatabaseUnavailable as error:
        print(f"pipeline: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pipeline: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
