"""API keys never land on disk or a console: every message that is stored or printed passes `redact`.

A key is registered the moment it is read from its environment variable (cotlib.api), and the runner
registers the keys a grid names before anything runs, so an error that echoes a key (a 401 quoting it)
is stored and shown with the key replaced.
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_values: set[str] = set()
MASK = "[redacted]"


def register(value: str | None) -> None:
    if value and len(value) >= 6:  # shorter strings would mask ordinary words
        with _lock:
            _values.add(value)


def register_env(name: str | None) -> None:
    if name:
        register(os.environ.get(name))


def redact(text: str) -> str:
    for value in sorted(_values, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


def redact_obj(obj):
    """`redact` through the strings of a JSON-able value."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj
