"""Errors for people: the one exception type lensbias raises for user mistakes.

The CLI prints a LensbiasError as a single line and exits with code 2.
"""

from __future__ import annotations


class LensbiasError(Exception):
    """A user-facing error: the message names what was found and how to fix it."""
