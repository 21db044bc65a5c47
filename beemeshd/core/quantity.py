"""Kubernetes resource quantities ("500m", "1.5Gi", "1e3", 2) -> exact integers.

Arithmetic is done with Fraction so "0.1" CPU is exactly 100 millicores. As in Kubernetes,
values are rounded *up*: asking for 0.1 m of CPU still reserves 1 m.
Errors are ValueError with a human reason; the caller adds the field path.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

# sign, number ("1", "1.", "1.5", ".5"), then one suffix. The decimal-exponent form is tried
# before the single-letter suffixes so "1E3" is 1000 while "1E" is one exa.
_QUANTITY = re.compile(
    r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE])?"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}  # powers of 1024
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_MAX_EXPONENT = 100  # keeps "1e999999999" from turning into a huge computation
_MAX_VALUE = 2**63 - 1  # Kubernetes stores quantities as int64


def parse_quantity(value: object) -> Fraction:
    """The exact value of a quantity given as a string or a YAML number."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a quantity such as '500m' or '128Mi', found {type(value).__name__}")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"invalid quantity {value!r}")
        return Fraction(repr(value))  # repr gives the shortest exact decimal, e.g. 0.1 -> "0.1"
    m = _QUANTITY.fullmatch(value)
    if m is None:
        raise ValueError(f"invalid quantity {value!r} (expected e.g. '500m', '0.5', '128Mi', '1G', '1e3')")
    sign, number, suffix = m.group(1), m.group(2), m.group(3) or ""
    amount = Fraction(number)
    if suffix in _BINARY:
        amount *= 1024 ** _BINARY[suffix]
    else:
        exponent = _DECIMAL[suffix] if suffix in _DECIMAL else int(suffix[1:])
        if abs(exponent) > _MAX_EXPONENT:
            raise ValueError(f"quantity {value!r} is out of range")
        amount *= Fraction(10) ** exponent
    return -amount if sign == "-" else amount


def _to_int(value: object, scale: int, unit: str) -> int:
    amount = parse_quantity(value)
    if amount < 0:
        raise ValueError(f"must not be negative, found {value!r}")
    result = math.ceil(amount * scale)
    if result > _MAX_VALUE:
        raise ValueError(f"quantity {value!r} is out of range (more than 2^63-1 {unit})")
    return result


def cpu_millis(value: object) -> int:
    """CPU quantity -> millicores: "500m" -> 500, "0.5" -> 500, 2 -> 2000."""
    return _to_int(value, 1000, "millicores")


def memory_bytes(value: object) -> int:
    """Memory/storage quantity -> bytes: "128Mi" -> 134217728, "1G" -> 10**9, "1e3" -> 1000."""
    return _to_int(value, 1, "bytes")
