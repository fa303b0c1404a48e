"""The command line and the database: typed restrictions, read-only commands, prefixes (issue 11, items 10-11)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from schemas import sysid
from schemas.restrictions import RestrictionError, restrictions_per_table, typed_restriction

ROOT = Path(__file__).resolve().parents[1]


def pipeline(db, *args: str, prefix: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, **db.env}
    env["PIPELINE_PREFIX"] = prefix or db.prefix
    return subprocess.run(
        [sys.executable, "-m", "schemas.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_a_misspelled_attribute_names_it_and_lists_the_tables_attributes(db):
    with pytest.raises(RestrictionError) as error:
        typed_restriction(sysid.TrainedModel, ["modle_hash=abc"])
    assert str(error.value).startswith("TrainedModel has no attribute 'modle_hash' (its attributes: dataset_id, ")
    assert "model_hash" in str(error.value)


def test_values_are_typed_by_the_heading_not_by_their_look(db):
    assert typed_restriction(sysid.Dataset, ["dataset_id=2024"]) == {"dataset_id": "2024"}
    assert typed_restriction(sysid.ModelConfig, ["model_hash=0000000000"]) == {"model_hash": "0000000000"}
    assert typed_restriction(sysid.Seed, ["seed=7"]) == {"seed": 7}
    with pytest.raises(RestrictionError, match=r"Seed.seed is .*int.*: 'seven' is not an integer"):
        typed_restriction(sysid.Seed, ["seed=seven"])


def test_a_restriction_shared_by_tables_applies_to_those_that_have_it(db):
    from schemas import imaging

    scopes = restrictions_per_table([imaging.ScanInfo, sysid.TrainedModel], ["scan_idx=2"])
    assert scopes == {imaging.ScanInfo: {"scan_idx": 2}}
    with pytest.raises(RestrictionError, match="no table of ScanInfo, TrainedModel has attribute 'itme_id'"):
        restrictions_per_table([imaging.ScanInfo, sysid.TrainedModel], ["itme_id=3"])


def test_reproduce_with_a_misspelled_attribute_is_one_line_and_exit_2(db):
    out = pipeline(db, "reproduce", "modle_hash=abc")
    assert out.returncode == 2, out.stdout + out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("pipeline reproduce: TrainedModel has no attribute 'modle_hash'")
    assert "Traceback" not in out.stderr


def test_a_varchar_restriction_that_looks_like_a_number_finds_nothing_instead_of_crashing(db):
    out = pipeline(db, "reproduce", "dataset_id=2024")
    assert out.returncode == 1, out.stderr
    assert out.stdout.strip() == "pipeline reproduce: no trained model matches {'dataset_id': '2024'}"


def test_jobs_retry_with_a_misspelled_attribute_changes_nothing(db):
    out = pipeline(db, "jobs", "retry", "ScanInfo", "scan_idxx=3")
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("pipeline jobs: no table of ScanInfo has attribute 'scan_idxx'")


def test_status_on_a_prefix_without_schemas_creates_nothing(db):
    import datajoint as dj

    out = pipeline(db, "status", prefix="nosuch_")
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("pipeline status: no pipeline schemas with prefix 'nosuch_' on this server")
    jobs = pipeline(db, "jobs", prefix="nosuch_")
    assert jobs.returncode == 2 and "no pipeline schemas with prefix 'nosuch_'" in jobs.stderr
    assert [name for name in dj.list_schemas(connection=db.connection) if name.startswith("nosuch_")] == []


def test_status_says_which_server_and_prefix_it_reads(db):
    out = pipeline(db, "status")
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    backend = "postgresql" if db.backend == "postgresql" else "mysql"
    assert first.startswith(f"database {backend} at ") and first.endswith(f"prefix {db.prefix!r}")


def test_a_prefix_with_a_quote_is_rejected_before_touching_the_server(db):
    import datajoint as dj

    out = pipeline(db, "--prefix", "lab'_", "status")
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith('pipeline status: schema prefix "lab\'_" is not valid (expected 1-32 characters')
    assert [name for name in dj.list_schemas(connection=db.connection) if name.startswith("lab")] == []


def test_status_piped_into_head_ends_without_a_traceback(db):
    env = {**__import__("os").environ, **db.env}
    command = f"{sys.executable} -m schemas.cli status | head -1"
    out = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.startswith("database ")
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr
