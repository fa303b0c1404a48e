"""`pipeline report`: one page on a scan or a trained model, PNG or HTML, from real rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import figures
from pipeline.simulation.population import simulate_population
from schemas import params, report, sysid, values

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def test_scale_bars_are_round_lengths():
    assert [figures._round_length(v) for v in (0.7, 3.0, 9.9, 23.0, 512 / 4)] == [0.5, 2.0, 5.0, 20.0, 100.0]


def test_scan_report_png_and_html(db, tmp_path):
    from tests.imaging_helpers import populate_small_scan

    key = populate_small_scan(db, tmp_path, seed=5)
    png = report.write_report(key, tmp_path / "scan.png", kind="scan")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    page = report.write_report(key, tmp_path / "scan.html", kind="scan").read_text()
    assert "<th>animal_id</th><td>9005</td>" in page and "data:image/png;base64," in page


def test_a_key_matching_several_rows_is_refused(db, tmp_path):
    with pytest.raises(report.ReportError, match=r"matches \d+ rows of Traces \(expected exactly one\)|matches 0 rows"):
        report.write_report({"animal_id": -1}, tmp_path / "x.png", kind="scan")
    with pytest.raises(report.ReportError, match="must end in .png or .html"):
        report.write_report({}, tmp_path / "x.pdf")


def test_model_report_from_the_command_line(db, tmp_path):
    folder = simulate_population(
        tmp_path / "population",
        seed=3,
        n_neurons=12,
        n_train=40,
        n_validation=8,
        n_test_images=6,
        repeats=3,
        height=16,
        width=16,
    )
    dataset_id = f"report_{db.backend}"
    sysid.import_filetree(folder, dataset_id)
    key = {
        "dataset_id": dataset_id,
        **params.insert_config(sysid.DatasetConfig, "filetree", {"batch_size": 16}),
        **params.insert_config(
            sysid.ModelConfig, "cnn_gaussian", {"hidden_channels": 4, "layers": 1, "input_kernel": 5}
        ),
        **params.insert_config(sysid.TrainerConfig, "standard_trainer", {"max_epochs": 2}),
        "seed": 0,
    }
    sysid.Seed.insert1({"seed": 0}, skip_duplicates=True)
    assert sysid.TrainedModel.populate(key, suppress_errors=True)["error_list"] == []
    pairs = [f"{k}={v}" for k, v in key.items()]
    env = {**__import__("os").environ, **db.env}
    out = subprocess.run(
        [sys.executable, "-m", "schemas.cli", "report", *pairs, "--out", str(tmp_path / "m.png")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"wrote {tmp_path / 'm.png'}"
    assert (tmp_path / "m.png").stat().st_size > 20_000
    history = values.json_value((sysid.TrainedModel & key).fetch1("output"))["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert np.isfinite([h["validation_correlation"] for h in history]).all()
