"""`pipeline demo`: interrupted with Ctrl-C and run again, it finishes the rest, no duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import datajoint as dj
import pytest

import schemas

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(pipeline_home):
    from conftest import _connect

    prefix = f"dm{uuid.uuid4().hex[:6]}_"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJ_")}
    env.update(PIPELINE_HOME=str(pipeline_home), DJ_IGNORE_CONFIG_FILE="true", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "schemas.cli", "--prefix", prefix, "demo", "--size", "small"]
    log = pipeline_home / f"{prefix}first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while time.time() < deadline and "Denoised" not in log.read_text():
            time.sleep(0.2)
        first.send_signal(signal.SIGINT)  # Ctrl-C in the middle of denoising
        first.wait(timeout=300)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    connection, _ = _connect("postgresql", pipeline_home)
    yield {
        "prefix": prefix,
        "first": first.returncode,
        "first_log": log.read_text(),
        "second": second,
        "connection": connection,
    }
    with dj.config.override(safemode=False):
        schemas.drop_all(prefix, connection)
    connection.close()


def query(run, sql):
    return run["connection"].query(sql).fetchall()


def test_interrupted_demo_stops_with_exit_code_130(demo_run):
    assert demo_run["first"] == 130, demo_run["first_log"][-2000:]
    assert "Demo summary" not in demo_run["first_log"]


def test_second_run_finishes_and_prints_the_summary(demo_run):
    second = demo_run["second"]
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Demo summary" in second.stdout
    assert "0 job error(s)" in second.stdout


def test_no_duplicate_or_partial_rows_after_the_rerun(demo_run):
    imaging = f'"{demo_run["prefix"]}imaging"'
    # two scans: the image scan and the video scan
    assert query(demo_run, f'SELECT count(*) FROM {imaging}."_scan_info"') == [(2,)]
    assert query(demo_run, f'SELECT count(*) FROM {imaging}."__denoised"') == [(2,)]
    ncells = sum(n for (n,) in query(demo_run, f'SELECT ncells FROM {imaging}."__segmentation"'))
    assert query(demo_run, f'SELECT count(*) FROM {imaging}."__segmentation__mask"') == [(ncells,)]
    assert query(demo_run, f'SELECT count(*) FROM {imaging}."__traces__unit"') == [(ncells,)]


def test_no_job_is_left_reserved_or_in_error(demo_run):
    for stage in ("imaging", "spikes", "sysid"):
        schema = f"{demo_run['prefix']}{stage}"
        tables = query(
            demo_run,
            f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}' "
            "AND table_name LIKE '~~%%'",
        )
        for (name,) in tables:
            rows = query(
                demo_run, f"SELECT count(*) FROM \"{schema}\".\"{name}\" WHERE status IN ('reserved', 'error')"
            )
            assert rows == [(0,)], f"{schema}.{name}"
