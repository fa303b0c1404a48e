"""docker-compose.yml cannot run here (no Docker engine): its structure is checked instead."""

from pathlib import Path

import re

import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


def load():
    return yaml.safe_load(COMPOSE.read_text())


def test_services_are_db_and_worker():
    assert set(load()["services"]) == {"db", "worker"}


def test_db_is_datajoint_mysql_with_persistent_volume_and_healthcheck():
    db = load()["services"]["db"]
    assert db["image"] == "datajoint/mysql:8.0"
    assert any(v.endswith(":/var/lib/mysql") for v in db["volumes"])
    assert "mysqladmin ping" in " ".join(db["healthcheck"]["test"])
    assert db["healthcheck"]["retries"] >= 10


def test_worker_reserves_one_gpu_and_waits_for_a_healthy_db():
    worker = load()["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == 1 and device["capabilities"] == ["gpu"]
    assert worker["depends_on"]["db"]["condition"] == "service_healthy"
    assert worker["environment"]["DJ_HOST"] == "db"
    assert worker["command"][0] == "worker"


def test_worker_installs_this_package_with_the_cpu_torch_first():
    dockerfile = load()["services"]["worker"]["build"]["dockerfile_inline"]
    assert dockerfile.index("torch==") < dockerfile.index("pip install --no-cache-dir -e")


def test_no_literal_password_is_committed():
    services = load()["services"]
    assert services["db"]["environment"]["MYSQL_ROOT_PASSWORD"].startswith("${DJ_PASS")
    assert services["worker"]["environment"]["DJ_PASS"].startswith("${DJ_PASS")
    assert not re.search(
        r"(PASSWORD|PASS)\s*[:=]\s*['\"]?[A-Za-z0-9]{3,}", COMPOSE.read_text().replace("${DJ_PASS", "")
    )
