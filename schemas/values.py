"""How values cross the database boundary: JSON that may come back as text, bytes as text.

- A ``json`` column comes back as a dict on PostgreSQL and, depending on driver and server, as
  its text on MySQL/MariaDB: ``json_value`` gives the value either way.
- A three-part make's ``make_fetch`` result is hashed by DataJoint (DeepHash) to check that
  nothing changed between fetch and insert; that hasher cannot take ``bytes``, so weights and
  arrays cross as text: ``bytes_as_text`` maps each byte to one character (latin-1), which costs
  no more memory than the bytes and hashes fast.
"""

from __future__ import annotations

import io
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


def array_as_text(array: np.ndarray | None) -> str | None:
    """An array (any dtype and shape) as text, for ``make_fetch`` results; None stays None.

    DeepHash walks a numpy array element by element (seconds for a few thousand images) but
    hashes text at once; the text is the array's ``.npy`` file, byte for character.
    """
    if array is None:
        return None
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return bytes_as_text(buffer.getvalue())


def text_as_array(text: str | None) -> np.ndarray | None:
    """The inverse of ``array_as_text``."""
    return None if text is None else np.load(io.BytesIO(text_as_bytes(text)), allow_pickle=False)
