"""`pipeline ingest` and `schemas.ingest` on a real database: a lab's own scans, trials, images, behaviour."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.imaging import io
from schemas import imaging, ingest, lab, spikes, sysid
from tests.imaging_helpers import blob_movie

ROOT = Path(__file__).resolve().parents[1]
ANIMAL = 9300  # other parts use 9000.. and 9100; the README's scans are animal 7


def _movie(folder: Path, name: str, frames: int = 40, fps: float = 10.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return io.write_scanimage_tiff(folder / name, blob_movie(frames, (16, 16)), fps)


def _trials(folder: Path, text: str) -> Path:
    path = folder / "trials.csv"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture(scope="module")
def stimulus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stimulus")
    for i in (930001, 930002):
        np.save(folder / f"{i}.npy", np.full((6, 8), i % 10, np.float32))
    return folder


def test_default_parameters_cover_every_step_and_are_idempotent(db):
    first = ingest.insert_default_parameters()
    again = ingest.insert_default_parameters()
    assert first == again
    assert sorted(first["imaging"]) == ["motion", "pmd", "segmentation", "traces"]
    assert (spikes.SpikeMethod & first["spikes"][0]).fetch1("builder") == "deconvolution"
    assert (sysid.ResponseWindow & first["window"]).fetch1("builder") == "window_mean"


def test_scan_outside_the_store_is_copied_and_onsets_in_seconds_become_frames(db, tmp_path, stimulus):
    movie = _movie(tmp_path, "scan.tif", frames=40, fps=10.0)
    trials = _trials(
        tmp_path,
        """
        trial_idx,image_id,onset_time,duration_time,tier
        0,930001,0.0,0.5,train
        1,930002,1.04,0.3,test
    """,
    )
    done = ingest.ingest_scan(movie, ANIMAL, 1, 1, trials=trials, images=stimulus)
    key = {"animal_id": ANIMAL, "session": 1, "scan_idx": 1}
    assert done.key == key and done.nframes == 40 and done.trials == 2
    assert done.timing == "ScanImage frame timestamps"
    assert done.filename == f"ingested/{ANIMAL}_1_1/scan.tif"
    assert (imaging.raw_store_location() / done.filename).read_bytes() == movie.read_bytes()
    rows = (imaging.Trial & key).to_dicts(order_by="trial_idx")
    assert [(r["onset_frame"], r["duration_frames"]) for r in rows] == [(0, 5), (11, 3)]
    assert [r["tier"] for r in (imaging.TrialTier & key).to_dicts(order_by="trial_idx")] == ["train", "test"]
    assert len(lab.Session & key) == 1 and len(lab.Subject & {"animal_id": ANIMAL}) == 1


def test_ingest_populates_to_traces_with_the_defaults(db, tmp_path, stimulus):
    movie = _movie(tmp_path, "scan.tif", frames=30, fps=10.0)
    trials = _trials(
        tmp_path,
        """
        trial_idx,image_id,onset_frame,duration_frames
        0,930001,2,5
    """,
    )
    done = ingest.ingest_scan(movie, ANIMAL, 1, 2, trials=trials, images=stimulus)
    restriction = {**done.key, **{k: v for step in done.parameters["imaging"].values() for k, v in step.items()}}
    for table in (imaging.ScanInfo, imaging.MotionCorrection, imaging.Denoised, imaging.Segmentation, imaging.Traces):
        table.populate(restriction, suppress_errors=False)
    assert (imaging.ScanInfo & done.key).fetch1("nframes") == 30
    assert (imaging.Traces & restriction).fetch1("nframes") == 30


def test_second_ingest_of_a_scan_is_an_error(db, tmp_path):
    movie = _movie(tmp_path, "scan.tif")
    ingest.ingest_scan(movie, ANIMAL, 2, 1)
    with pytest.raises(ingest.IngestError, match=rf"Scan {ANIMAL}/2/1 is already registered \(file 'ingested/"):
        ingest.ingest_scan(movie, ANIMAL, 2, 1)


def test_frame_rate_that_contradicts_the_header_is_an_error(db, tmp_path):
    movie = _movie(tmp_path, "scan.tif", fps=10.0)
    with pytest.raises(ingest.IngestError, match=r"frame rate 30 Hz given but the file's header says 10 Hz"):
        ingest.ingest_scan(movie, ANIMAL, 2, 2, frame_rate=30.0)
    assert not imaging.Scan & {"animal_id": ANIMAL, "session": 2, "scan_idx": 2}


def test_trial_showing_an_unknown_image_is_an_error_and_inserts_nothing(db, tmp_path):
    movie = _movie(tmp_path, "scan.tif")
    trials = _trials(
        tmp_path,
        """
        trial_idx,image_id,onset_frame,duration_frames
        0,939999,0,3
    """,
    )
    with pytest.raises(ingest.IngestError, match=r"image id\(s\) \[939999\] that are neither in the images folder"):
        ingest.ingest_scan(movie, ANIMAL, 2, 3, trials=trials)
    assert not imaging.Scan & {"animal_id": ANIMAL, "session": 2, "scan_idx": 3}


def test_image_id_stored_with_another_image_is_an_error(db, tmp_path, stimulus):
    ingest.ingest_scan(_movie(tmp_path, "a.tif"), ANIMAL, 3, 1, images=stimulus)
    other = tmp_path / "other"
    other.mkdir()
    np.save(other / "930001.npy", np.zeros((6, 8), np.float32))
    with pytest.raises(ingest.IngestError, match=r"image id\(s\) \[930001\] are stored with other images"):
        ingest.ingest_scan(_movie(tmp_path, "b.tif"), ANIMAL, 3, 2, images=other)


def test_trial_beyond_the_movie_is_an_error(db, tmp_path, stimulus):
    trials = _trials(
        tmp_path,
        """
        trial_idx,image_id,onset_frame,duration_frames
        4,930001,38,5
    """,
    )
    with pytest.raises(ingest.IngestError, match=r"trial 4 spans frames 38..42 \(expected within the movie's 40"):
        ingest.ingest_scan(_movie(tmp_path, "scan.tif"), ANIMAL, 2, 4, trials=trials, images=stimulus)


# ---------------------------------------------------------------------------------------------
# the README's "Your own experiment", verbatim
# ---------------------------------------------------------------------------------------------


def readme_commands() -> str:
    """The bash block of the README section "Your own experiment"."""
    section = (ROOT / "README.md").read_text().split("## Your own experiment\n", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def readme_run(db, shared_data, tmp_path_factory):
    """Run the README's commands in a folder beside a ``../shared/data`` that is the real one."""
    root = tmp_path_factory.mktemp(f"readme_{db.backend}")
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(shared_data)
    work = root / "work"
    work.mkdir()
    bin_dir = root / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "pipeline"  # the installed console script, pointing at this checkout
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m schemas.cli "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJ_")}
    env.update(db.env)
    env["PATH"] = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        ["bash", "-e", "-c", readme_commands()], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    return result


def test_readme_commands_succeed(readme_run):
    assert readme_run.returncode == 0, readme_run.stdout[-3000:] + readme_run.stderr[-3000:]
    assert "Scan 7/1/1: raw store file 'ingested/7_1_1/Blank-IPA_1s_16r_032.tif', 30 frames" in readme_run.stdout
    assert "5 trial(s) (onsets in seconds converted with the ScanImage 3.x header)" in readme_run.stdout


def _defaults(key: dict) -> dict:
    """``key`` restricted to the default parameter sets (other tests may add sets the README's worker also ran)."""
    defaults = ingest.insert_default_parameters()
    steps = {k: v for step in defaults["imaging"].values() for k, v in step.items()}
    return {**key, **steps, **defaults["window"], **defaults["spikes"][0]}


def test_readme_scanimage_scan_reaches_traces_and_trial_responses(readme_run):
    key = {"animal_id": 7, "session": 1, "scan_idx": 1}
    info = (imaging.ScanInfo & key).fetch1()
    assert (info["nframes"], info["height"], info["width"], info["software"]) == (30, 64, 64, "ScanImage 3.8")
    assert info["fps"] == pytest.approx(8.13802083333333)
    # 0.6 s at 8.138 Hz: frame 5 starts at 0.614 s, the first at or after the onset
    onsets = [r["onset_frame"] for r in (imaging.Trial & key).to_dicts(order_by="trial_idx")]
    assert onsets == [0, 5, 10, 15, 20]
    key = _defaults(key)
    ncells = (imaging.Segmentation & key).fetch1("ncells")
    assert ncells >= 1 and len(imaging.Traces.Unit & key) == ncells
    assert (imaging.Traces.Unit & key).to_dicts()[0]["dff"].shape == (30,)
    assert (sysid.TrialResponses & key).fetch1("n_trials") == 5


def test_readme_imagej_scan_reaches_traces_with_behaviour(readme_run):
    key = {"animal_id": 7, "session": 1, "scan_idx": 2}
    info = (imaging.ScanInfo & key).fetch1()
    assert (info["nframes"], info["height"], info["width"], info["fps"]) == (20, 128, 256, 10.0)
    assert info["software"].startswith("ImageJ TIFF")
    running = (imaging.Behavior & key).fetch1("running")
    assert running.shape == (20,) and running[5] == pytest.approx(2.5) and running[15] == pytest.approx(4.0)
    key = _defaults(key)
    assert len(imaging.Traces.Unit & key) == (imaging.Segmentation & key).fetch1("ncells") >= 1
    assert (sysid.TrialResponses & key).fetch1("has_behavior")


# ---------------------------------------------------------------------------------------------
# a lab's own Subject / Session module
# ---------------------------------------------------------------------------------------------

OWN_LAB = '''
import datajoint as dj

schema = dj.Schema()


@schema
class Mouse(dj.Manual):
    definition = """
    animal_id : int32
    ---
    cage : varchar(16)
    """


@schema
class Session(dj.Manual):
    definition = """
    -> Mouse
    session : int16
    ---
    rig : varchar(16)
    """
'''

OWN_LAB_BAD_KEY = '''
import datajoint as dj

schema = dj.Schema()


@schema
class Session(dj.Manual):
    definition = """
    session_id : int32
    """
'''

SCRIPT = """
import sys
import datajoint as dj
import schemas
prefix = sys.argv[1]
try:
    schemas.activate(prefix)
    from schemas import imaging
    import mylab
    print("parents", sorted(imaging.Scan.parents()))
    mylab.Mouse.insert1({"animal_id": 1, "cage": "A3"})
    mylab.Session.insert1({"animal_id": 1, "session": 2, "rig": "2p-1"})
    imaging.Scan.insert1({"animal_id": 1, "session": 2, "scan_idx": 3, "filename": "lab_test.tif"})
    print("scans", imaging.Scan.keys())
finally:
    with dj.config.override(safemode=False):
        schemas.drop_all(prefix, dj.conn())
"""


def _own_lab(db, tmp_path, module_text: str):
    (tmp_path / "mylab.py").write_text(module_text)
    (imaging.raw_store_location() / "lab_test.tif").write_bytes(b"not read")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJ_")}
    env.update(db.env)
    env.update(PIPELINE_LAB_MODULE="mylab", PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    prefix = db.prefix.rstrip("_") + "l_"
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, prefix], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


def test_scans_hang_under_a_labs_own_session_table(db, tmp_path):
    out = _own_lab(db, tmp_path, OWN_LAB)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert "session" in lines["parents"] and "lab" in lines["parents"]
    assert lines["scans"] == "[{'animal_id': 1, 'session': 2, 'scan_idx': 3}]"


def test_lab_session_with_another_key_is_an_error(db, tmp_path):
    out = _own_lab(db, tmp_path, OWN_LAB_BAD_KEY)
    assert out.returncode != 0
    assert "mylab.Session has primary key ['session_id'] (expected exactly ['animal_id', 'session']" in out.stderr


def test_readme_tiers_become_the_datasets_tiers(readme_run, db, tmp_path):
    responses = (sysid.TrialResponses & _defaults({"animal_id": 7, "session": 1, "scan_idx": 1})).fetch1("KEY")
    dataset = sysid.dataset_from_responses(responses, f"readme_{db.backend}")
    folder = sysid.export_dataset(dataset, tmp_path / "tree")
    tiers = np.load(folder / "meta" / "trials" / "tiers.npy")
    assert tiers.tolist() == ["train", "train", "validation", "test", "test"]
