"""Metadata filters: a validated subset of ChromaDB's `where` language, also evaluable in Python
(the lexical index filters candidates itself, so both retrievers honour the same filter).

    {"file": "a.pdf"}                                  equality shorthand
    {"page": {"$ne": 1}}   {"file": {"$in": [..]}}     $eq $ne $in $nin
    {"$and": [f, ...]}     {"$or": [f, ...]}           several top-level keys mean $and
"""

from __future__ import annotations

import math
import re
from typing import Any

Scalar = str | int | float | bool
FIELD_OPERATORS = ("$eq", "$ne", "$in", "$nin")
LOGICAL_OPERATORS = ("$and", "$or")
MAX_DEPTH = 5
MAX_CONDITIONS = 50
MAX_IN_VALUES = 100


_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")


class FilterError(ValueError):
    """The filter is malformed or the store refused it; the message says where (HTTP 422)."""


def normalize_filter(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate and rewrite into Chroma's canonical form; None or {} means no filter."""
    if not raw:
        return None
    counter = [0]
    return _normalize(raw, depth=1, counter=counter)


def _normalize(node: Any, depth: int, counter: list[int]) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise FilterError(f"filter nested deeper than {MAX_DEPTH} levels")
    if not isinstance(node, dict) or not node:
        raise FilterError("a filter must be a non-empty JSON object")
    clauses = []
    for key, value in node.items():
        if key in LOGICAL_OPERATORS:
            if not isinstance(value, list) or not value:
                raise FilterError(f"{key} takes a non-empty list of filters")
            parts = [_normalize(item, depth + 1, counter) for item in value]
            clauses.append(parts[0] if len(parts) == 1 else {key: parts})
        elif key.startswith("$"):
            raise FilterError(f"unknown operator {key!r}; use one of {', '.join(LOGICAL_OPERATORS)} or a field name")
        elif not _FIELD_NAME.match(key):
            raise FilterError(f"invalid field name {key!r}")
        else:
            clauses.append({key: _field_condition(key, value)})
            counter[0] += 1
            if counter[0] > MAX_CONDITIONS:
                raise FilterError(f"more than {MAX_CONDITIONS} conditions")
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _field_condition(field: str, value: Any) -> dict[str, Any]:
    if _is_scalar(value):
        return {"$eq": value}
    if not isinstance(value, dict) or len(value) != 1:
        raise FilterError(f'field {field!r}: give a value or one operator object such as {{"$ne": 1}}')
    ((operator, operand),) = value.items()
    if operator not in FIELD_OPERATORS:
        raise FilterError(f"field {field!r}: unknown operator {operator!r}; use one of {', '.join(FIELD_OPERATORS)}")
    if operator in ("$in", "$nin"):
        if not isinstance(operand, list) or not operand or not all(_is_scalar(v) for v in operand):
            raise FilterError(f"field {field!r}: {operator} takes a non-empty list of values")
        if len(operand) > MAX_IN_VALUES:
            raise FilterError(f"field {field!r}: {operator} takes at most {MAX_IN_VALUES} values")
        if len({type(v) for v in operand}) > 1:
            raise FilterError(f"field {field!r}: {operator} values must all have one type")
    elif not _is_scalar(operand):
        raise FilterError(f"field {field!r}: {operator} takes a string, number or boolean")
    return {operator: operand}


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and not (isinstance(value, float) and not math.isfinite(value))


def _same(actual: Any, expected: Any) -> bool:
    # Chroma keeps booleans apart from numbers (True does not match 1), unlike Python's ==.
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    return actual == expected


def matches(where: dict[str, Any] | None, metadata: dict[str, Any]) -> bool:
    """Evaluate a normalized filter against one chunk's metadata (as Chroma would)."""
    if not where:
        return True
    ((key, value),) = where.items()
    if key == "$and":
        return all(matches(part, metadata) for part in value)
    if key == "$or":
        return any(matches(part, metadata) for part in value)
    ((operator, operand),) = value.items()
    present = key in metadata
    actual = metadata.get(key)
    if operator == "$eq":
        return present and _same(actual, operand)
    if operator == "$ne":
        return not present or not _same(actual, operand)
    if operator == "$in":
        return present and any(_same(actual, value) for value in operand)
    return not present or not any(_same(actual, value) for value in operand)  # $nin
