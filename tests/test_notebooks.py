"""The notebooks run from start to end against a database that `pipeline demo` filled.

CI runs the README's main job (`pipeline demo`) first and names its database with
PIPELINE_DEMO_HOME / PIPELINE_DEMO_PREFIX; without them this module runs a small demo of its
own into the test's embedded server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import datajoint as dj
import nbformat
import pytest
from nbclient import NotebookClient

import schemas

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# notebooks that run on pure functions alone, without the demo database
STANDALONE = {"06_pose.ipynb"}
ALL_NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NOTEBOOKS = [p for p in ALL_NOTEBOOKS if p.name not in STANDALONE]


@pytest.fixture(scope="module")
def demo_env(pipeline_home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJ_")}
    env["DJ_IGNORE_CONFIG_FILE"] = "true"
    home, prefix = os.environ.get("PIPELINE_DEMO_HOME"), os.environ.get("PIPELINE_DEMO_PREFIX")
    if home and prefix:
        env.update(PIPELINE_HOME=home, PIPELINE_PREFIX=prefix)
        yield env
        return
    prefix = f"nb{uuid.uuid4().hex[:6]}_"
    env.update(PIPELINE_HOME=str(pipeline_home), PIPELINE_PREFIX=prefix)
    done = subprocess.run(
        [sys.executable, "-m", "schemas.cli", "demo", "--size", "small"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Demo summary" in done.stdout
    yield env
    from conftest import _connect

    connection, _ = _connect("postgresql", pipeline_home)
    with dj.config.override(safemode=False):
        schemas.drop_all(prefix, connection)
    connection.close()


def run_notebook(path: Path, env: dict) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute(env=env)
    return notebook


def text_output(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output["text"])
            elif "data" in output and "text/plain" in output["data"]:
                parts.append(output["data"]["text/plain"])
    return "\n".join(parts)


def test_every_notebook_is_listed():
    # the standalone notebooks run without the demo database
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "07", "08", "09"]
    assert [p.name for p in ALL_NOTEBOOKS if p.name in STANDALONE] == ["06_pose.ipynb"]


def test_pose_notebook_runs_without_a_database():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJ_", "PIPELINE_"))}
    notebook = run_notebook(ROOT / "notebooks" / "06_pose.ipynb", env)
    out = text_output(notebook)
    (flow_ece,) = re.findall(r"cgnf .* ECE ([0-9.]+)   ECE occluded", out)
    assert 0 <= float(flow_ece) < 0.1
    assert "the 2D keypoints add" in out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_start_to_end(path, demo_env):
    notebook = run_notebook(path, demo_env)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "a code cell did not run"
    out = text_output(notebook)
    assert f"schemas activated with prefix '{demo_env['PIPELINE_PREFIX']}'" in out
    if path.name.startswith("01"):
        assert re.search(r"Score\s+[1-9]\d* rows", out)
    if path.name.startswith("02"):
        assert re.search(r"recall (0|1)\.\d\d, precision", out)
    if path.name.startswith("03"):
        ((shift, blur),) = re.findall(r"best shift ([+-]\d+) ms, blur (\d+) ms on [1-9]\d* cells", out)
        assert abs(int(shift)) <= 200 and int(blur) in (0, 20, 40, 60, 80)
    if path.name.startswith("07"):
        assert re.search(r"MEI vs true filter: median correlation -?[01]\.\d\d; preferred orientation error", out)
        assert re.search(r"[1-9]\d* held-out units", out)
    if path.name.startswith("05"):
        (difference,) = re.findall(r"largest difference ([0-9.e+-]+)", out)
        assert float(difference) < 1e-5
    if path.name.startswith("09"):
        found = re.findall(r"held-out half: log-likelihood (-?[0-9.]+) from the prior -> (-?[0-9.]+) given", out)
        assert len(found) == 2  # the video-only and the latent model
        assert "movie (" in out and "behaviour from the inferred latents" in out
    if path.name.startswith("08"):
        assert "strength 0 is the identity: True" in out and "RobustnessScore 4 rows" in out
