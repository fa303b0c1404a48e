"""Test-only tables for the worker tests and benchmark: items whose make() sleeps, spins or fails.

Loaded by workers with ``pipeline worker --module tests.work_tables`` (the way a lab adds its
own analysis tables). Each ``make()`` appends ``<item_id> start|done <unix time>`` to a per-process log
file in ``$WORK_LOG_DIR`` (when set), so tests can count how often each key was computed.
"""

import os
import time

import datajoint as dj

schema = dj.Schema()
STAGE = "work"


@schema
class Item(dj.Manual):
    definition = """
    item_id: int32
    ---
    sleep=0: float64     # seconds make() sleeps
    spin=0: int64        # iterations of a CPU-bound loop in make()
    fail=0: int16        # 1: make() raises
    """


def spin(iterations: int) -> int:
    """A CPU-bound loop (one core, holds the GIL)."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def _log(key: dict, event: str) -> None:
    folder = os.environ.get("WORK_LOG_DIR")
    if folder:
        with open(os.path.join(folder, f"{os.getpid()}.log"), "a") as f:
            f.write(f"{key['item_id']} {event} {time.time():.6f}\n")


@schema
class Square(dj.Computed):
    definition = """
    -> Item
    ---
    value: int64
    checksum: int64
    worker_pid: int32
    """

    def make(self, key):
        item = (Item & key).fetch1()
        _log(key, "start")
        if item["fail"]:
            raise ValueError(f"item {key['item_id']}: fail flag is set (expected fail=0)")
        time.sleep(float(item["sleep"]))
        checksum = spin(int(item["spin"]))
        _log(key, "done")
        self.insert1(dict(key, value=int(key["item_id"]) ** 2, checksum=checksum, worker_pid=os.getpid()))
