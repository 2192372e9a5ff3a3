"""Numbers (seconds, sizes, counts) read from the environment, with one error message for bad values."""

from __future__ import annotations

import os


def env_number(name: str, *, allow_zero: bool = False) -> float | None:
    """The number in $`name`; None when unset or blank. ValueError naming the variable when it is not a
    number, or not positive (zero allowed with `allow_zero`, e.g. for "no limit")."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        number = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if number < 0 or (number == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'zero or more' if allow_zero else 'positive'}, got {raw!r}")
    return number
