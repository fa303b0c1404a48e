"""The `pipeline` command and the embedded database, driven as a user drives them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.restrictions import RestrictionError, split_pairs


def run(args, env_extra=None, home=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJ_")}
    env["DJ_IGNORE_CONFIG_FILE"] = "true"
    if home is not None:
        env["PIPELINE_HOME"] = str(home)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "schemas.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def fresh_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("clihome")
    yield home
    run(["db", "stop"], home=home)


def test_restriction_pairs_are_split_at_the_first_equals_sign():
    assert split_pairs(["animal_id=3", "rate=0.5", "note=a b=c"]) == {"animal_id": "3", "rate": "0.5", "note": "a b=c"}


def test_restriction_without_equals_sign_is_rejected():
    with pytest.raises(RestrictionError, match="'animal_id' is not of the form attr=value"):
        split_pairs(["animal_id"])


def test_restriction_with_sql_in_the_name_is_rejected():
    with pytest.raises(RestrictionError, match="is not of the form attr=value"):
        split_pairs(["1=1 or x=1"])


def test_db_start_then_status_reports_running_embedded_server(fresh_home):
    started = run(["db", "start"], home=fresh_home)
    assert started.returncode == 0, started.stderr
    status = run(["db", "status"], home=fresh_home)
    assert status.returncode == 0, status.stderr
    assert "embedded PostgreSQL" in status.stdout and ": running" in status.stdout
    assert "PostgreSQL 1" in status.stdout  # the server's own version line


def test_second_db_start_is_a_no_op(fresh_home):
    run(["db", "start"], home=fresh_home)
    pid = (fresh_home / "pgdata" / "postmaster.pid").read_text().split()[0]
    again = run(["db", "start"], home=fresh_home)
    assert again.returncode == 0
    assert "already running" in again.stdout
    assert (fresh_home / "pgdata" / "postmaster.pid").read_text().split()[0] == pid


def test_activate_declares_schemas_with_no_configuration(fresh_home):
    code = "import schemas, datajoint as dj; schemas.activate('x_'); print(sorted(dj.list_schemas()))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJ_")}
    env.update(PIPELINE_HOME=str(fresh_home), DJ_IGNORE_CONFIG_FILE="true")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'x_imaging'" in out.stdout and "'x_workers'" in out.stdout


def test_stale_lock_after_a_crash_is_recovered(tmp_path):
    home = tmp_path / "crashed"
    assert run(["db", "start"], home=home).returncode == 0
    pid = int((home / "pgdata" / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)  # the server dies without removing its lock file
    deadline = time.time() + 10
    while time.time() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    assert (home / "pgdata" / "postmaster.pid").exists()
    try:
        restarted = run(["db", "start"], home=home)
        assert restarted.returncode == 0, restarted.stderr
        status = run(["db", "status"], home=home)
        assert ": running" in status.stdout
        new_pid = int((home / "pgdata" / "postmaster.pid").read_text().split()[0])
        assert new_pid != pid
    finally:
        run(["db", "stop"], home=home)


def test_db_stop_then_status_says_stopped(tmp_path):
    home = tmp_path / "stopping"
    assert run(["db", "start"], home=home).returncode == 0
    stopped = run(["db", "stop"], home=home)
    assert "embedded PostgreSQL stopped" in stopped.stdout
    status = run(["db", "status"], home=home)
    assert status.returncode == 1
    assert "stopped" in status.stdout


def test_unreachable_host_is_one_line_and_exit_code_2(tmp_path):
    out = run(
        ["db", "status"],
        home=tmp_path,
        env_extra={"DJ_HOST": "127.0.0.1:1", "DJ_BACKEND": "mysql", "DJ_USER": "root", "DJ_PASS": "x"},
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("pipeline db: cannot connect to mysql at 127.0.0.1:1 as root (backend mysql):")
    assert "Connection refused" in lines[0]
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(not os.environ.get("PIPELINE_TEST_MYSQL"), reason="no MySQL-family server configured")
def test_wrong_password_is_one_line_and_exit_code_2(tmp_path):
    from conftest import mysql_spec

    spec = mysql_spec()
    out = run(
        ["db", "status"],
        home=tmp_path,
        env_extra={
            "DJ_HOST": f"{spec['host']}:{spec['port']}",
            "DJ_BACKEND": "mysql",
            "DJ_USER": spec["user"],
            "DJ_PASS": "not-the-password",
        },
    )
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert "Access denied" in line and f"as {spec['user']}" in line
    assert "not-the-password" not in out.stdout + out.stderr  # never printed


def test_every_subcommand_has_help():
    top = run(["--help"])
    assert top.returncode == 0 and "db" in top.stdout
    sub = run(["db", "--help"])
    assert sub.returncode == 0 and "status" in sub.stdout


def test_importing_the_packages_touches_no_database(tmp_path):
    code = (
        "import schemas, pipeline, schemas.imaging, schemas.sysid, schemas.spikes, schemas.workers, schemas.cli;"
        "import datajoint as dj; print(hasattr(dj.conn, 'connection'))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJ_")}
    env.update(PIPELINE_HOME=str(tmp_path / "untouched"), DJ_HOST="127.0.0.1:1", DJ_BACKEND="mysql")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert not (tmp_path / "untouched").exists()
