"""The checkpoint package's one error type, and how its messages show lists of keys."""

from __future__ import annotations

_SHOWN_KEYS = 5


class CheckpointError(Exception):
    """A checkpoint cannot be found, fetched, trusted, read or fitted; the message says what and where."""


def first_items(items: list[str]) -> str:
    """The first few of ``items`` for a message (a checkpoint can have a thousand keys)."""
    shown = ", ".join(items[:_SHOWN_KEYS])
    return shown + (", ..." if len(items) > _SHOWN_KEYS else "")
