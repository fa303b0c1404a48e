"""`pipeline status` as operators read it: pending work upstream, parameter sets by builder name."""

from __future__ import annotations

from schemas import imaging, params, sysid
from schemas.workers.status import describe_key, table_status


def test_tables_waiting_on_their_parents_are_not_shown_complete(db):
    from tests.imaging_helpers import small_experiment

    key = {"animal_id": 9700, "session": 1, "scan_idx": 1}
    imaging.insert_simulated_scan(small_experiment(4), key, image_id_offset=70000)
    imaging.insert_default_params()
    rows = {
        row["table"].split(".")[-1]: row
        for row in table_status([imaging.ScanInfo, imaging.MotionCorrection, imaging.Denoised])
    }
    assert rows["ScanInfo"]["remaining"] >= 1 and rows["ScanInfo"]["waiting_on"] == []
    assert rows["MotionCorrection"]["waiting_on"] == ["ScanInfo"]
    assert rows["Denoised"]["waiting_on"] == ["ScanInfo", "MotionCorrection"]


def test_a_parameter_hash_in_a_key_reads_as_its_builder(db):
    model = params.insert_config(sysid.ModelConfig, "linear_nonlinear", {})
    text = describe_key({"dataset_id": "pop", **model, "seed": 1})
    assert text == f"dataset_id=pop model=linear_nonlinear#{model['model_hash'][:6]} seed=1"
