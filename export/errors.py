"""The one exception the exporter raises for anything a person must fix (input, weights, verification)."""

from __future__ import annotations


class ExportError(Exception):
    """An export that cannot go ahead; the message says what went wrong and what to change.

    Nothing is written to the model repository when this is raised.
    """
