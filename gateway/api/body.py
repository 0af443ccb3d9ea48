"""Strict request parsing: JSON objects with known fields of the right type, known query parameters only."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from gateway.api.errors import ApiError, bad_request
from gateway.durations import parse_duration
from gateway.review.sanitize import free_text_problem

Convert = Callable[[str, Any], Any]
MAX_BODY = 64 * 1024


def text(name: str, value: Any) -> str:
    """A JSON string."""
    if not isinstance(value, str):
        raise bad_request(f"field {name!r} must be a string, got {_kind(value)}")
    return value


def free_text(name: str, value: Any) -> str:
    """A reason or comment: a string of printable text on one line, of sane length (else 422 naming the field).

    These are shown to approvers and reviewers; an escape sequence in a reason once made scope `admin`
    render as `read` in the approver's terminal. Output is neutralised too; this keeps new text clean.
    """
    checked = text(name, value)
    problem = free_text_problem(checked)
    if problem is not None:
        raise ApiError("invalid", f"field {name!r} {problem}")
    return checked


def duration(name: str, value: Any) -> float:
    """Seconds as a positive number, or a duration string like "15m"."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise bad_request(f'field {name!r} must be seconds or a duration like "15m", got {_kind(value)}')
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise bad_request(f"field {name!r}: {exc}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise bad_request(f"field {name!r} must be more than zero seconds")
    return float(value)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


async def read_json(request: web.Request, fields: Mapping[str, tuple[Convert, bool]]) -> dict[str, Any]:
    """Parse the body as one JSON object with only `fields` (name -> (converter, required))."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError("too-large", f"request body larger than {MAX_BODY} bytes")
    raw = await request.read()
    if not raw.strip():
        doc: Any = {}
    else:
        ctype = request.content_type
        if ctype not in ("application/json", "application/octet-stream", ""):
            raise ApiError("unsupported-media-type", f"send JSON (Content-Type: application/json), not {ctype}")
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_request(f"body must be a JSON object, got {_kind(doc)}")
    unknown = sorted(set(doc) - set(fields))
    if unknown:
        raise bad_request(f"unknown field {unknown[0]!r}; expected {', '.join(sorted(fields)) or 'none'}")
    out: dict[str, Any] = {}
    for name, (convert, required) in fields.items():
        if name not in doc:
            if required:
                raise bad_request(f"field {name!r} is required")
            continue
        out[name] = convert(name, doc[name])
    return out


def query(request: web.Request, allowed: Mapping[str, Convert]) -> dict[str, Any]:
    """Known query parameters, converted; an unknown one is an error (a typo would silently widen a filter)."""
    out: dict[str, Any] = {}
    for name in request.query:
        if name not in allowed:
            raise bad_request(f"unknown query parameter {name!r}; expected {', '.join(sorted(allowed)) or 'none'}")
        values = request.query.getall(name)
        if len(values) > 1 and name != "type":
            raise bad_request(f"query parameter {name!r} given more than once")
        out[name] = allowed[name](name, values if name == "type" else values[0])
    return out


def q_bool(name: str, value: Any) -> bool:
    """true/false/1/0."""
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise bad_request(f"query parameter {name!r} must be true or false")


def q_number(name: str, value: Any) -> float:
    """A number (a timestamp)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad_request(f"query parameter {name!r} must be a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise bad_request(f"query parameter {name!r} must be a finite number")
    return number


def q_limit(name: str, value: Any) -> int:
    """A positive whole number up to 10000."""
    if not isinstance(value, str) or not value.isdigit() or not 1 <= int(value) <= 10000:
        raise bad_request(f"query parameter {name!r} must be a whole number from 1 to 10000")
    return int(value)


def q_choice(*choices: str) -> Convert:
    """One of `choices`."""

    def convert(name: str, value: Any) -> str:
        if value not in choices:
            raise bad_request(f"query parameter {name!r} must be one of {', '.join(choices)}")
        return str(value)

    return convert


def q_types(name: str, value: Any) -> list[str]:
    """Repeatable event types."""
    return [str(v) for v in value]
