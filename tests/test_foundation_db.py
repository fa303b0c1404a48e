"""Activation on a real server: every stage's schema is declared under the test prefix."""

import datajoint as dj

import schemas


def test_activate_declares_every_stage(db):
    names = set(dj.list_schemas(connection=db.connection))
    assert {db.prefix + stage for stage in schemas.STAGES} <= names
