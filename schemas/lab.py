"""The lab's subjects and sessions that scans hang under: the default linking module.

``schemas.imaging.Scan`` references ``-> Session`` of a *linking module* (the DataJoint
Elements idea): this module by default, or a lab's own, named by ``PIPELINE_LAB_MODULE`` or
``schemas.activate(lab=...)``. A lab's own module needs a ``Session`` table whose primary key
is exactly ``(animal_id, session)`` (``animal_id : int32``, ``session : int16``), so that every
scan key stays ``(animal_id, session, scan_idx)``; it may offer ``ensure_session(key)``, which
ingest calls to insert a missing session, else sessions must exist before their scans.
"""

from __future__ import annotations

import datajoint as dj

schema = dj.Schema()


@schema
class Subject(dj.Manual):
    definition = """
    # an animal
    animal_id        : int32
    ---
    species = "mouse"   : varchar(32)
    genotype = ""       : varchar(255)
    sex = "U"           : char(1)          # M, F or U (unknown)
    note = ""           : varchar(1023)
    """


@schema
class Session(dj.Manual):
    definition = """
    # one experiment day of an animal: its scans share the preparation
    -> Subject
    session          : int16
    ---
    session_date = null : date
    experimenter = ""   : varchar(64)
    note = ""           : varchar(1023)
    """


def ensure_session(key: dict) -> dict:
    """Insert the ``Subject`` and ``Session`` of ``key`` if absent (defaults elsewhere); return its key.

    Parameters
    ----------
    key
        Holds at least ``animal_id`` and ``session``; other attributes are ignored.

    Returns
    -------
    dict
        ``{"animal_id": ..., "session": ...}``.
    """
    session = {"animal_id": int(key["animal_id"]), "session": int(key["session"])}
    Subject.insert1({"animal_id": session["animal_id"]}, skip_duplicates=True)
    Session.insert1(session, skip_duplicates=True)
    return session
