"""Parameter validation in one declared place: the error quotes the value and the range."""

from __future__ import annotations

import math


def check_range(name: str, value: object, low: float = -math.inf, high: float = math.inf, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number in the range, else raise.

    Raises:
        ValueError: naming the parameter, the value and the accepted range.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(f"{name} must be a finite number in {left}{low}, {high}{right}, "
                         f"got {value!r}")
    return float(value)
