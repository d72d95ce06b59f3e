"""argparse value types shared by the commands: each rejects bad values with a message naming them."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(minimum: int) -> Callable[[str], int]:
    """An int >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be {minimum} or more")
        return value

    return parse


def number_in(low: float, high: float, *, low_open: bool = False, note: str = "") -> Callable[[str], float]:
    """A float in [low, high], or (low, high] with `low_open`."""
    shown = f"({low:g}, {high:g}]" if low_open else f"{low:g}..{high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        inside = (low < value if low_open else low <= value) and value <= high
        if not inside:
            raise argparse.ArgumentTypeError(f"{text} is outside {shown}{note}")
        return value

    return parse
