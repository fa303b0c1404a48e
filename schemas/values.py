"""How values cross the database boundary: JSON that may come back as text, bytes as text.

- A ``json`` column comes back as a dict on PostgreSQL and, depending on driver and server, as
  its text on MySQL/MariaDB: ``json_value`` gives the value either way.
- A three-part make's ``make_fetch`` result is hashed by DataJoint (DeepHash) to check that
  nothing changed between fetch and insert; that hasher cannot take ``bytes``, so weights and
  arrays cross as text: ``bytes_as_text`` maps each byte to one character (latin-1), which costs
  no more memory than the bytes and hashes fast.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def json_value(value: Any) -> Any:
    """The value of a ``json`` column as fetched: parsed if the backend handed back its text."""
    return json.loads(value) if isinstance(value, str) else value


def bytes_as_text(data: bytes) -> str:
    """``data`` as a str of the same length (one character per byte), for ``make_fetch`` results."""
    return bytes(data).decode("latin-1")


def text_as_bytes(text: str) -> bytes:
    """The inverse of ``bytes_as_text``."""
    return text.encode("latin-1")


def array_as_text(array: np.ndarray) -> str:
    """A 1-D float array as text (little-endian float32 bytes), for ``make_fetch`` results."""
    return bytes_as_text(np.asarray(array, dtype="<f4").tobytes())


def text_as_array(text: str) -> np.ndarray:
    """The inverse of ``array_as_text``: a float32 array."""
    return np.frombuffer(text_as_bytes(text), dtype="<f4")
