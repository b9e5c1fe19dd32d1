"""How the dashboard writes numbers: one function per kind, so the same number reads the same on
every page (a grid caption and the explanation beside it must never disagree by a rounding).
"""
from __future__ import annotations

import math

MISSING = "–"  # a score an older run did not record


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def probability(p) -> str:
    """A model's probability: one decimal of a percent, so a 0.5 % runner-up is not "0 %" and a
    99.96 % answer is not "100 %" (a model that says 100 % was never that sure)."""
    if _missing(p):
        return MISSING
    p = float(p)
    if 0 < p < 0.0005:
        return "<0.1%"
    if 0.9995 <= p < 1:
        return ">99.9%"
    return f"{p:.1%}"


def share(value) -> str:
    """An accuracy or a share of images (top-1, top-5, recall), one decimal of a percent."""
    return MISSING if _missing(value) else f"{float(value):.1%}"


def interval(bounds, percent: bool = True) -> str:
    """A 95 % interval as "60.1–72.0 %" (or "0.60–0.72" for scores that are not shares);
    "–" when the run has none (trained before intervals were recorded)."""
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or any(map(_missing, bounds)):
        return MISSING
    low, high = (float(b) for b in bounds)
    if percent:
        return f"{100 * low:.1f}–{100 * high:.1f} %"
    return f"{low:.2f}–{high:.2f}"


def with_interval(value, bounds, percent: bool = True) -> str:
    """"66.4% (60.1–72.0 %)", or "0.664 (0.60–0.72)"; the value alone when there is no interval."""
    if _missing(value):
        return MISSING
    text = share(value) if percent else f"{float(value):.3f}"
    spread = interval(bounds, percent)
    return text if spread == MISSING else f"{text} ({spread})"


def points(difference_pp) -> str:
    """A difference of two accuracies in percentage points, signed: "+3.2 pp". Never "%": a
    change from 60 % to 63 % is 3 points, not 3 (or 5) percent."""
    if _missing(difference_pp):
        return MISSING
    return f"{float(difference_pp):+.1f} pp"  # an ASCII minus: st.metric colours by it


def points_interval(bounds) -> str:
    """A paired interval of a difference in points: "-1.0 to +7.4 pp"."""
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2 or any(map(_missing, bounds)):
        return MISSING
    low, high = (f"{float(b):+.1f}" for b in bounds)
    return f"{low} to {high} pp"


def p_value(p) -> str:
    """A p-value with the precision it deserves: "p = 0.042", "p < 0.001"."""
    if _missing(p):
        return MISSING
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def difference(a, b) -> str:
    """Score `a` minus score `b` (both 0..1) in signed points; "–" when either is missing."""
    if _missing(a) or _missing(b):
        return MISSING
    return points(100 * (float(a) - float(b)))


def number(value, spec: str = ".3f", unit: str = "") -> str:
    """Any other figure (F1, ECE, milliseconds), or "–" when it was not recorded."""
    return MISSING if _missing(value) else f"{float(value):{spec}}{unit}"


def to_float(value) -> float:
    """A figure as a float, NaN when it is missing (None, NaN, or not a number at all)."""
    try:
        return float("nan") if _missing(value) else float(value)
    except (TypeError, ValueError):
        return float("nan")
