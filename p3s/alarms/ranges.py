"""Numeric thresholds for Prefect triggers, which match labels by glob pattern only.

A trigger cannot compare numbers: ``match`` holds glob patterns (``fnmatch``) that a resource
label must fit. So a DQM value travels as a fixed-width decimal string of digits
(:func:`sortable`: 2.5 ms at 3 decimals is ``000000002500``), and a threshold becomes the few
patterns that together fit exactly the strings below or above it (:func:`below_patterns`,
:func:`above_patterns`): one pattern per digit position, so at most ``width`` of them. The
emitter and ``p3s alarms apply`` share these functions, so a threshold changes with one apply.
"""

from __future__ import annotations

import math

#: Digits of every sortable value (integer part and decimals together).
WIDTH = 12
#: Decimals of each DQM quantity's sortable label (``p3s.dqm.value`` events).
DECIMALS = {"lifetime_ms": 3, "noisy_channels": 0}


def _scaled(value: float, decimals: int) -> int:
    return round(value * 10**decimals)


def sortable(value: float, decimals: int = 0, width: int = WIDTH) -> str:
    """``value`` as ``width`` digits with ``decimals`` implied decimals, clamped to the range.

    Negative values get a leading ``-`` (they fit every below pattern); values too large for
    ``width`` digits become all nines.

    Raises:
        ValueError: ``value`` is NaN or infinite (there is nothing to compare).
    """
    if not math.isfinite(value):
        raise ValueError(f"{value!r} has no sortable form: give a finite number.")
    scaled = _scaled(value, decimals)
    if scaled < 0:
        return "-" + str(min(-scaled, 10**width - 1)).zfill(width)
    return str(min(scaled, 10**width - 1)).zfill(width)


def below_patterns(threshold: float, decimals: int = 0, width: int = WIDTH) -> list[str]:
    """Glob patterns that fit ``sortable(v)`` exactly when ``v < threshold`` (at that precision)."""
    limit = _scaled(threshold, decimals)
    patterns = ["-*"]
    if limit <= 0:
        return patterns
    if limit >= 10**width:
        return [*patterns, "?" * width]
    digits = str(limit).zfill(width)
    for i, char in enumerate(digits):
        digit = int(char)
        if digit:
            low = "0" if digit == 1 else f"[0-{digit - 1}]"
            patterns.append(digits[:i] + low + "?" * (width - i - 1))
    return patterns


def above_patterns(threshold: float, decimals: int = 0, width: int = WIDTH) -> list[str]:
    """Glob patterns that fit ``sortable(v)`` exactly when ``v > threshold`` (at that precision).

    Raises:
        ValueError: ``threshold`` is negative (only non-negative limits are supported).
    """
    limit = _scaled(threshold, decimals)
    if limit < 0:
        raise ValueError(f"threshold {threshold} is negative: give a limit of 0 or more.")
    if limit >= 10**width - 1:
        return []
    digits = str(limit).zfill(width)
    patterns = []
    for i, char in enumerate(digits):
        digit = int(char)
        if digit < 9:
            high = "9" if digit == 8 else f"[{digit + 1}-9]"
            patterns.append(digits[:i] + high + "?" * (width - i - 1))
    return patterns
