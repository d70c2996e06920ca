"""Chance-corrected agreement measures, written over additive statistics so that bootstrap resamples
of documents are matrix products (see ``recommender.evaluation.stats``).

Categories are small integers; ``MISSING`` (-1) marks a rater who did not annotate a unit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

MISSING = -1

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


# --- Cohen's kappa -------------------------------------------------------------------------------


def confusion(a: IntArray, b: IntArray, categories: int) -> IntArray:
    """``(categories, categories)`` counts of (a, b) category pairs over units both raters coded."""
    keep = (a != MISSING) & (b != MISSING)
    flat = np.bincount(a[keep] * categories + b[keep], minlength=categories * categories)
    return flat.reshape(categories, categories)


def kappa_from_confusion(c: NDArray) -> FloatArray:
    """Cohen's kappa of one confusion matrix, or of a stack ``(..., K, K)``. When chance agreement is
    total (both raters used one and the same category throughout) kappa is undefined; it is 1.0 then
    if the raters agree everywhere, else 0.0."""
    c = np.asarray(c, dtype=np.float64)
    n = c.sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        po = np.trace(c, axis1=-2, axis2=-1) / n
        pe = (c.sum(axis=-1) * c.sum(axis=-2)).sum(axis=-1) / (n * n)
        kappa = (po - pe) / (1 - pe)
    return np.where(pe >= 1, np.where(po >= 1, 1.0, 0.0), np.where(n > 0, kappa, np.nan))


def cohen_kappa(a: Sequence[int], b: Sequence[int], categories: int | None = None) -> float:
    a_, b_ = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    k = categories or int(max(a_.max(initial=0), b_.max(initial=0)) + 1)
    return float(kappa_from_confusion(confusion(a_, b_, k)))


# --- Fleiss' kappa -------------------------------------------------------------------------------


def fleiss_stats(values: IntArray, categories: int) -> FloatArray:
    """Additive statistics of Fleiss' kappa over the units ``values[:, u]`` coded by every rater:
    ``[sum of per-unit agreement P_u, number of units, category totals...]``."""
    full = values[:, (values != MISSING).all(axis=0)]
    raters, units = full.shape
    counts = np.zeros((units, categories), dtype=np.float64)
    for r in range(raters):
        np.add.at(counts, (np.arange(units), full[r]), 1)
    p_u = ((counts**2).sum(axis=1) - raters) / max(raters * (raters - 1), 1)
    return np.concatenate([[p_u.sum(), units], counts.sum(axis=0)])


def fleiss_from_stats(stats: NDArray) -> FloatArray:
    """Fleiss' kappa from ``fleiss_stats`` (or a stack of them, one per bootstrap resample)."""
    s = np.asarray(stats, dtype=np.float64)
    p_sum, units, totals = s[..., 0], s[..., 1], s[..., 2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        p_bar = p_sum / units
        p_j = totals / totals.sum(axis=-1, keepdims=True)
        pe = (p_j**2).sum(axis=-1)
        kappa = (p_bar - pe) / (1 - pe)
    return np.where(pe >= 1, np.where(p_bar >= 1, 1.0, 0.0), np.where(units > 0, kappa, np.nan))


def fleiss_kappa(values: IntArray, categories: int) -> float:
    """Fleiss' kappa over ``values`` (raters x units); units some rater did not code are left out."""
    return float(fleiss_from_stats(fleiss_stats(np.asarray(values), categories)))


# --- Krippendorff's alpha (nominal) ---------------------------------------------------------------


def coincidence(values: IntArray, categories: int) -> FloatArray:
    """Krippendorff's coincidence matrix of ``values`` (raters x units, ``MISSING`` allowed).
    Each unit coded by m >= 2 raters adds its m(m-1) ordered pairs of values, weighted 1/(m-1)."""
    values = np.asarray(values)
    counts = np.zeros((values.shape[1], categories), dtype=np.float64)
    for row in values:
        ok = row != MISSING
        np.add.at(counts, (np.nonzero(ok)[0], row[ok]), 1)
    m = counts.sum(axis=1)
    pairable = m >= 2
    counts, m = counts[pairable], m[pairable]
    weighted = counts / (m - 1)[:, None]
    return weighted.T @ counts - np.diag(weighted.sum(axis=0))


def alpha_from_coincidence(o: NDArray) -> FloatArray:
    """Nominal alpha from a coincidence matrix (or a stack ``(..., K, K)``); 1.0 when only one value
    was ever used (no variation, so nothing to disagree on), as the ``krippendorff`` package does not
    define it either way."""
    o = np.asarray(o, dtype=np.float64)
    n_c = o.sum(axis=-1)
    n = n_c.sum(axis=-1)
    observed = n - np.trace(o, axis1=-2, axis2=-1)  # off-diagonal coincidences
    expected = n * n - (n_c**2).sum(axis=-1)  # sum over c != k of n_c n_k
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = 1 - (n - 1) * observed / expected
    return np.where(expected > 0, alpha, 1.0)


def krippendorff_alpha(values: IntArray, categories: int) -> float:
    return float(alpha_from_coincidence(coincidence(values, categories)))


# --- Krippendorff's unitizing alpha (alpha_U) ------------------------------------------------------
#
# As DKPro Statistics' KrippendorffAlphaUnitizingAgreement (used by INCEpTION) defines it, after
# Krippendorff (1995): one category at a time, every rater's continuum [0, L) is cut into that
# category's units and the gaps between them; the observed disagreement sums a distance over every
# overlapping (segment of rater i, segment of rater j) pair, the expected one considers every
# placement of every unit over every gap. Both are averaged over categories before alpha = 1 - Do/De.

Unit = tuple[int, int]  # (begin, end) of one rater's unit of one category


def _segments(units: Sequence[Unit], length: int) -> list[tuple[int, int, bool]]:
    """The rater's continuum as (begin, end, is_unit) pieces; gaps fill what units leave."""
    out: list[tuple[int, int, bool]] = []
    pos = 0
    for b, e in sorted(units):
        if b > pos:
            out.append((pos, b, False))
        out.append((b, e, True))
        pos = e
    if pos < length:
        out.append((pos, length, False))
    return out


def _distance(s1: tuple[int, int, bool], s2: tuple[int, int, bool]) -> int:
    (b1, e1, u1), (b2, e2, u2) = s1, s2
    l1, l2 = e1 - b1, e2 - b2
    begin_diff, length_diff = b1 - b2, l1 - l2
    if u1 and u2 and -l1 < begin_diff < l2:
        return begin_diff**2 + (begin_diff + length_diff) ** 2
    if u1 and not u2 and b1 >= b2 and e1 <= e2:  # a unit inside the other rater's gap
        return l1 * l1
    if u2 and not u1 and b2 >= b1 and e2 <= e1:
        return l2 * l2
    return 0


def observed_sum(units_by_rater: Sequence[Sequence[Unit]], length: int) -> int:
    """Sum of distances over all rater pairs for one category (the numerator of D_o)."""
    pieces = [_segments(u, length) for u in units_by_rater]
    total = 0
    for i in range(len(pieces)):
        for j in range(i + 1, len(pieces)):
            a, b = pieces[i], pieces[j]
            x = y = 0
            while x < len(a) and y < len(b):
                if a[x][0] < b[y][1] and b[y][0] < a[x][1]:  # overlapping pieces are compared
                    total += _distance(a[x], b[y])
                if a[x][1] <= b[y][1]:
                    x += 1
                else:
                    y += 1
    return total


def gaps(units: Sequence[Unit], length: int) -> list[int]:
    return [e - b for b, e, is_unit in _segments(units, length) if not is_unit]


def expected_terms(lengths: NDArray, gap_lengths: NDArray) -> float:
    """sum over units l of l^2 * sum over gaps g >= l of (g - l + 1): the unit-in-gap placements."""
    g = np.sort(np.asarray(gap_lengths, dtype=np.float64))
    suffix = np.concatenate([np.cumsum(g[::-1])[::-1], [0.0]])
    lengths = np.asarray(lengths, dtype=np.float64)
    first = np.searchsorted(g, lengths, side="left")
    count_ge = len(g) - first
    return float((lengths**2 * (suffix[first] - (lengths - 1) * count_ge)).sum())


Part = tuple[Sequence[Sequence[Unit]], int]  # (units of each rater, continuum length) of one document


def unitizing_category(parts: Sequence[Part]) -> tuple[float, float]:
    """(D_o, D_e) of one category. One part is DKPro's study of one document; several parts pool
    documents into one continuum whose gaps stop at document boundaries."""
    raters = len(parts[0][0])
    length = sum(n for _, n in parts)
    lengths = np.array([e - b for units, _ in parts for rater in units for b, e in rater], dtype=np.float64)
    all_gaps = np.array(
        [g for units, n in parts for rater in units for g in gaps(rater, n)], dtype=np.float64
    )
    observed = sum(observed_sum(units, n) for units, n in parts)
    d_o = 2.0 * observed / (raters * (raters - 1) * length * length)
    n_c = len(lengths)
    within = ((n_c - 1) * (2 * lengths**3 - 3 * lengths**2 + lengths) / 3).sum()
    numerator = (within + expected_terms(lengths, all_gaps)) * 2 / length
    denominator = raters * length * (raters * length - 1) - (lengths * (lengths - 1)).sum()
    return d_o, float(numerator / denominator)


def unitizing_alpha(
    parts: dict[str, Sequence[Part]], categories: Sequence[str] | None = None
) -> tuple[float, dict[str, float]]:
    """alpha_U over ``categories`` (default: every category with a unit) and per category.

    ``parts[category]`` holds, per document, every rater's non-overlapping units of that category
    and the document length. A category whose D_o equals its D_e scores 0.0, as in DKPro; the
    result is NaN when no category has a unit.
    """
    names = [c for c in (categories or parts) if any(r for units, _ in parts.get(c, ()) for r in units)]
    if not names:
        return float("nan"), {}
    per: dict[str, float] = {}
    d_os, d_es = [], []
    for c in names:
        d_o, d_e = unitizing_category(parts[c])
        d_os.append(d_o)
        d_es.append(d_e)
        per[c] = 0.0 if d_o == d_e else 1 - d_o / d_e
    d_o, d_e = float(np.mean(d_os)), float(np.mean(d_es))
    return (0.0 if d_o == d_e else 1 - d_o / d_e), per


def drop_overlaps(spans: Sequence[Unit]) -> list[Unit]:
    """One rater's units of one category without self-overlaps (alpha_U requires none): like
    INCEpTION, in (begin, longest first) order a unit overlapping a kept one is dropped."""
    kept: list[Unit] = []
    for b, e in sorted(spans, key=lambda s: (s[0], -s[1])):
        if not kept or b >= max(k[1] for k in kept):
            kept.append((b, e))
    return kept
