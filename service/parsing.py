"""Total parsers for request input: every string maps to a value or to a 4xx ServiceError, never a 500.

``int()`` alone is not total (it refuses strings over 4,300 digits with ValueError and accepts
unicode digits, underscores and whitespace), so integers are checked for plain ASCII digits and a
bounded length before conversion. Anything echoed back is cut to :data:`MAX_ECHO_CHARS`.
"""

from __future__ import annotations

from typing import Protocol

from service.errors import ServiceError

#: Longest piece of client input repeated in an error message.
MAX_ECHO_CHARS = 200
#: Digits accepted in an integer field: enough for any int64, far below int()'s 4,300-digit limit.
MAX_INT_DIGITS = 19


def shown(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """``repr`` of client input, at most ``limit`` characters of it after escaping.

    Cutting before escaping is not enough: ``repr`` turns one unprintable character into up to ten
    (``'\\U00018cd6'``), so 200 characters of input could echo as 2,000.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    length = len(value) if isinstance(value, (str, bytes)) else len(text)
    return f"{text[:limit]}... ({length} characters)"


def parse_int(
    raw: str,
    *,
    field: str,
    minimum: int = 0,
    maximum: int = 2**63 - 1,
    code: str = "invalid_request",
    too_large_code: str | None = None,
) -> int:
    """A decimal integer of plain ASCII digits within [minimum, maximum], else 422 ``code``.

    A well-formed number above ``maximum`` (of any length) gets ``too_large_code`` when given.
    """
    expected = f"{field}: expected an integer between {minimum} and {maximum}, got {shown(raw, 40)}"
    if not (raw and raw.isascii() and raw.isdigit()):
        raise ServiceError(422, code, expected)
    if len(raw) > MAX_INT_DIGITS or int(raw) > maximum:
        raise ServiceError(422, too_large_code or code, expected)
    value = int(raw)
    if value < minimum:
        raise ServiceError(422, code, expected)
    return value


def json_int(value: object, *, field: str, minimum: int = 0, maximum: int = 2**63 - 1) -> int:
    """An integer from parsed JSON (bool and float are not integers here), within bounds, else 400."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ServiceError(400, "invalid_request", f"{field}: expected an integer, got {shown(value, 40)}")
    if not minimum <= value <= maximum:
        raise ServiceError(400, "invalid_request", f"{field}: {shown(value, 40)} is outside {minimum}..{maximum}")
    return value


class MultiMapping(Protocol):
    def getlist(self, key: str) -> list[str]: ...


def single(params: MultiMapping, name: str) -> str | None:
    """The one value of query parameter ``name`` (None when absent); repeating it is ambiguous: 422."""
    values = params.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise ServiceError(422, "invalid_request", f"query.{name}: given {len(values)} times; give it once")
    return values[0]
