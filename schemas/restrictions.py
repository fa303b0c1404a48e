"""Restrictions typed by a table's heading: ``["animal_id=3", "note=x y"]`` -> ``{"animal_id": 3, ...}``.

A restriction written on the command line is checked against the attributes of the table it
restricts: an attribute the table does not have is an error (DataJoint would silently drop it
and act on every row), and each value is converted by the attribute's declared type, not by how
it looks (``dataset_id=2024`` stays the text ``"2024"`` on a varchar; ``model_hash=000`` stays
``"000"``).
"""

from __future__ import annotations

from typing import Any, Sequence


class RestrictionError(ValueError):
    """A restriction that names an unknown attribute or a value its type cannot hold."""


def split_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``["a=1", "b=x y"]`` -> ``{"a": "1", "b": "x y"}`` (text values; syntax checked only)."""
    out: dict[str, str] = {}
    for pair in pairs:
        attr, sep, value = pair.partition("=")
        attr = attr.strip()
        if not sep or not attr.isidentifier():
            raise RestrictionError(f"restriction {pair!r} is not of the form attr=value")
        out[attr] = value
    return out


def _typed(attribute, value: str, where: str) -> Any:
    sql_type = attribute.type.lower()
    if attribute.numeric:
        kind = int if "int" in sql_type and "point" not in sql_type else float
        try:
            return kind(value)
        except ValueError:
            raise RestrictionError(
                f"{where}.{attribute.name} is {attribute.type}: {value!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
    return value


def typed_restriction(table, pairs: Sequence[str] | dict[str, str], *, allow_missing: bool = False) -> dict[str, Any]:
    """The restriction of ``table`` that the ``attr=value`` ``pairs`` spell, typed by its heading.

    Parameters
    ----------
    table
        A DataJoint table (class or instance), or a jobs table.
    pairs
        ``attr=value`` strings, or a dict of attribute name -> text value.
    allow_missing
        Skip attributes the table lacks instead of raising (a restriction shared by several
        tables, each taking the attributes it has).

    Raises
    ------
    RestrictionError
        An attribute the table does not have (naming the table's attributes), or a value its
        attribute's type cannot hold.
    """
    texts = split_pairs(pairs) if not isinstance(pairs, dict) else dict(pairs)
    heading = table.heading
    where = getattr(table, "__name__", None) or type(table).__name__
    out: dict[str, Any] = {}
    for name, value in texts.items():
        if name not in heading.names:
            if allow_missing:
                continue
            raise RestrictionError(f"{where} has no attribute {name!r} (its attributes: {', '.join(heading.names)})")
        out[name] = _typed(heading.attributes[name], value, where)
    return out


def restrictions_per_table(
    tables: Sequence[type], pairs: Sequence[str], *, of_jobs: bool = False
) -> dict[type, dict[str, Any]]:
    """One typed restriction per table for ``pairs`` shared by several tables.

    Every attribute must belong to at least one of ``tables``; a table that lacks an attribute
    of the restriction is left out (it cannot match it), so the result maps only the tables the
    restriction applies to. ``of_jobs``: the restriction is of the tables' jobs tables (their
    primary key and the job's own attributes).
    """
    texts = split_pairs(pairs)
    if not texts:
        return {cls: {} for cls in tables}
    headings = {cls: (cls().jobs if of_jobs else cls).heading for cls in tables}
    known = {name for heading in headings.values() for name in heading.names}
    unknown = [name for name in texts if name not in known]
    if unknown:
        names = ", ".join(cls.__name__ for cls in tables)
        raise RestrictionError(
            f"no table of {names} has attribute {unknown[0]!r} (their attributes: {', '.join(sorted(known))})"
        )
    out = {}
    for cls in tables:
        if all(name in headings[cls].names for name in texts):
            out[cls] = {
                name: _typed(headings[cls].attributes[name], value, cls.__name__) for name, value in texts.items()
            }
    return out
