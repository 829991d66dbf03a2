"""Result tables shaped like the paper's Tables II, IV and V, and the ``results.json`` method entries.

Numbers are given as fractions in [0, 1] and printed as percentages with two decimals, as in the paper
("84.50", CI "81.00–88.00"); p-values with four decimals, "<0.0001" below that.

Taught in ``book/08_evaluation.md``.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .stats import bootstrap_ci, paired_test

Count = Union[int, str, None]
Row = Union[Mapping[str, Any], "MethodResult"]


# --------------------------------------------------------------------------------------------------------------
# Cell formatting
# --------------------------------------------------------------------------------------------------------------
def _fraction(x: Any, what: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a fraction in [0, 1], got {x!r}") from None
    if not math.isnan(v) and not 0.0 <= v <= 1.0:
        raise ValueError(f"{what} must be a fraction in [0, 1] (not a percentage), got {x!r}")
    return v


def format_percent(x: Optional[float], what: str = "value") -> str:
    """A fraction as a percentage with two decimals: ``0.845 -> "84.50"``; ``None`` / ``nan`` -> ``"-"``.
    """
    if x is None:
        return "-"
    v = _fraction(x, what)
    return "-" if math.isnan(v) else f"{100.0 * v:.2f}"


def format_ci(ci: Optional[Sequence[float]], what: str = "ci") -> str:
    """A CI of fractions as ``"81.00–88.00"`` (percentages, en dash); ``None`` -> ``"-"``.
    """
    if ci is None:
        return "-"
    if isinstance(ci, (str, bytes)) or len(ci) != 2:
        raise ValueError(f"{what} must be a (low, high) pair, got {ci!r}")
    lo, hi = (_fraction(v, what) for v in ci)
    if math.isnan(lo) or math.isnan(hi):
        return "-"
    if lo > hi:
        raise ValueError(f"{what} has low > high: {ci!r}")
    return f"{format_percent(lo)}–{format_percent(hi)}"


def format_p_value(p: Optional[float], what: str = "p_value") -> str:
    """``"<0.0001"`` below 1e-4, else four decimals (``"0.0032"``); ``None`` / ``nan`` -> ``"-"``.
    """
    if p is None:
        return "-"
    try:
        v = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in [0, 1], got {p!r}") from None
    if math.isnan(v):
        return "-"
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {p!r}")
    return "<0.0001" if v < 1e-4 else f"{v:.4f}"


def _format_count(n: Count, what: str) -> str:
    if n is None:
        return "-"
    if isinstance(n, str):
        return n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{what} must be a non-negative integer, a string or None, got {n!r}")
    return str(int(n))


# --------------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------------
@dataclass
class MethodResult:
    """One trained method's evaluation, as stored in ``results.json`` and shown in Tables II, IV and V.

    Attributes
    ----------
    name : method name (``"strong_few"``, ``"joint"``, ...).
    n_strong, n_weak : training images with boxes / with only an image label.
    overall, benign, malignant : CorLoc fractions (``nan`` when undefined).
    ci : bootstrap CI (low, high) of ``overall``, fractions.
    p_value : p-value of the comparison with the reference method (``None`` for the reference itself).
    supervision : level of supervision, e.g. ``"Weak"``, ``"Strong"``, ``"Weak & Semi"`` (Table V).
    aspect, variant : Table II's columns.
    per_image : per-image CorLoc outcomes (not written to JSON), for paired tests (:func:`add_p_values`).
    ap50, ap : COCO AP at IoU 0.5 and over 0.50:0.95, dicts with ``benign``, ``malignant``, ``mAP`` (optional).
    froc_cpm : the lesion-level FROC's CPM score (optional).
    auc : the image-level malignancy AUC (optional).

    :meth:`from_report` fills every field from a :class:`wsbus.evaluate.DetectionReport`.

    Taught in ``book/08_evaluation.md``.
    """

    name: str
    n_strong: int
    n_weak: int
    overall: float
    benign: float = math.nan
    malignant: float = math.nan
    ci: Optional[Tuple[float, float]] = None
    p_value: Optional[float] = None
    supervision: Optional[str] = None
    aspect: Optional[str] = None
    variant: Optional[str] = None
    per_image: Optional[np.ndarray] = field(default=None, repr=False)
    ap50: Optional[Dict[str, float]] = None
    ap: Optional[Dict[str, float]] = None
    froc_cpm: Optional[float] = None
    auc: Optional[float] = None

    @classmethod
    def from_corloc(cls, name: str, result: Any, n_strong: int, n_weak: int, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0, **extra: Any) -> "MethodResult":
        """Build from a :class:`wsbus.evaluate.CorLocResult`, with the bootstrap CI of its overall CorLoc."""
        per_image = np.asarray(result.per_image, dtype=bool)
        ci = bootstrap_ci(per_image, n_boot=n_boot, level=level, seed=seed) if per_image.size else None
        return cls(name=name, n_strong=n_strong, n_weak=n_weak, overall=float(result.overall),
                   benign=float(result.benign), malignant=float(result.malignant), ci=ci,
                   per_image=per_image, **extra)

    @classmethod
    def from_report(cls, name: str, report: Any, n_strong: int, n_weak: int, **extra: Any) -> "MethodResult":
        """Build from a :class:`wsbus.evaluate.DetectionReport`: CorLoc, its overall CI and per-image outcomes,
        ``ap50``, ``ap``, ``froc_cpm`` and ``auc`` (the CI is the report's, with its ``n_boot``, ``level``,
        ``seed``)."""
        cl = report.corloc
        lo, hi = report.ci["overall"]
        return cls(name=name, n_strong=n_strong, n_weak=n_weak, overall=float(cl.overall), benign=float(cl.benign),
                   malignant=float(cl.malignant), ci=None if math.isnan(lo) else (float(lo), float(hi)),
                   per_image=np.asarray(cl.per_image, dtype=bool), ap50=dict(report.ap50), ap=dict(report.ap),
                   froc_cpm=float(report.froc_cpm), auc=float(report.auc), **extra)

    def as_row(self) -> Dict[str, Any]:
        """The dict :func:`results_table` reads."""
        return {"name": self.name, "corloc": self.overall, "ci": self.ci, "p_value": self.p_value,
                "n_strong": self.n_strong, "n_weak": self.n_weak, "supervision": self.supervision,
                "aspect": self.aspect, "variant": self.variant, "ap50": self.ap50, "ap": self.ap,
                "froc_cpm": self.froc_cpm, "auc": self.auc}


def add_p_values(methods: Sequence[MethodResult], reference: str, test: Literal["mcnemar", "t"] = "mcnemar",
                 n_boot: int = 1000, seed: int = 0) -> List[MethodResult]:
    """Copies of ``methods`` whose ``p_value`` compares each method with ``reference`` (:func:`paired_test`).

    ``test="mcnemar"`` (default) stores McNemar's exact p-value; ``test="t"`` the paper's paired t-test over
    bootstrap replicates (Table V's numbers, which shrink with ``n_boot``: see :func:`paired_test`). The reference
    gets ``None`` ("-" in the table). Every method needs ``per_image`` on the same test images.

    Taught in ``book/08_evaluation.md``.
    """
    if test not in ("mcnemar", "t"):
        raise ValueError(f"test must be 'mcnemar' or 't', got {test!r}")
    by_name = {m.name: m for m in methods}
    if reference not in by_name:
        raise ValueError(f"reference method {reference!r} is not among {list(by_name)}")
    ref = by_name[reference]
    out = []
    for m in methods:
        for who in (m, ref):
            if who.per_image is None:
                raise ValueError(f"method {who.name!r} has no per_image outcomes; build it with "
                                 "MethodResult.from_corloc to compute p-values")
        if m.name == reference:
            p = None
        else:
            r = paired_test(m.per_image, ref.per_image, n_boot=n_boot, seed=seed)
            p = r.mcnemar_pvalue if test == "mcnemar" else r.t_pvalue
        out.append(replace(m, p_value=p))
    return out


def to_json_methods(methods: Sequence[MethodResult]) -> List[Dict[str, Any]]:
    """The ``"methods"`` entries of ``results.json`` (design.md section 11).

    Each entry is ``{"name": str, "n_strong": int, "n_weak": int, "corloc": {"overall": f, "benign": f,
    "malignant": f}, "ci": [lo, hi]}`` (fractions; ``nan`` is written as ``null`` so the file stays valid JSON),
    plus ``"p_value"`` and ``"supervision"`` when set, and (design section 13) ``"ap50"`` and ``"ap"`` (``{"benign",
    "malignant", "mAP"}``), ``"froc_cpm"`` and ``"auc"`` when set (:meth:`MethodResult.from_report` sets them).

    Taught in ``book/08_evaluation.md``.
    """
    def f(x: Optional[float]) -> Optional[float]:
        return None if x is None or math.isnan(float(x)) else float(x)

    out = []
    names = set()
    for m in methods:
        if not isinstance(m, MethodResult):
            raise TypeError(f"to_json_methods expects MethodResult objects, got {type(m).__name__}")
        if m.name in names:
            raise ValueError(f"method name {m.name!r} appears twice")
        names.add(m.name)
        for key in ("n_strong", "n_weak"):
            v = getattr(m, key)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"method {m.name!r}: {key} must be a non-negative integer for results.json, "
                                 f"got {v!r}")
        entry: Dict[str, Any] = {
            "name": str(m.name), "n_strong": int(m.n_strong), "n_weak": int(m.n_weak),
            "corloc": {"overall": f(_fraction(m.overall, f"{m.name}.overall")),
                       "benign": f(_fraction(m.benign, f"{m.name}.benign")),
                       "malignant": f(_fraction(m.malignant, f"{m.name}.malignant"))},
            "ci": None if m.ci is None else [f(v) for v in m.ci],
        }
        if m.p_value is not None:
            entry["p_value"] = f(m.p_value)
        if m.supervision is not None:
            entry["supervision"] = m.supervision
        for key in ("ap50", "ap"):
            d = getattr(m, key)
            if d is not None:
                entry[key] = {k: f(_fraction(d.get(k, math.nan), f"{m.name}.{key}.{k}"))
                              for k in ("benign", "malignant", "mAP")}
        for key in ("froc_cpm", "auc"):
            v = getattr(m, key)
            if v is not None:
                entry[key] = f(_fraction(v, f"{m.name}.{key}"))
        out.append(entry)
    return out


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------
def _rows(rows: Sequence[Row]) -> List[Mapping[str, Any]]:
    if isinstance(rows, Mapping):
        raise TypeError("rows must be a list of dicts (or MethodResult), one per method, not a single dict")
    out = []
    for i, r in enumerate(rows):
        if isinstance(r, MethodResult):
            r = r.as_row()
        if not isinstance(r, Mapping):
            raise TypeError(f"rows[{i}] must be a dict or MethodResult, got {type(r).__name__}")
        out.append(r)
    if not out:
        raise ValueError("rows is empty: a table needs at least one method")
    return out


def _get(row: Mapping[str, Any], i: int, key: str) -> Any:
    if key not in row:
        raise ValueError(f"{_label(row, i)} has no {key!r} (keys: {sorted(row)})")
    return row[key]


def _text(row: Mapping[str, Any], i: int, key: str) -> str:
    v = _get(row, i, key)
    if v is None:
        raise ValueError(f"{_label(row, i)}: {key!r} is None")
    return str(v)


def _label(row: Mapping[str, Any], i: int) -> str:
    return f"rows[{i}]" + (f" ({row['name']!r})" if row.get("name") is not None else "")


def render_table(header: List[str], body: List[List[str]], align: List[str], fmt: str = "markdown") -> str:
    """A table of strings as Markdown (``fmt="markdown"``) or HTML (``"html"``); ``align`` holds ``"l"``, ``"r"``
    or ``"c"`` per column."""
    if fmt == "markdown":
        def cell(s: str) -> str:
            return s.replace("|", "\\|")
        rule = {"l": "---", "r": "---:", "c": ":---:"}
        lines = ["| " + " | ".join(cell(h) for h in header) + " |",
                 "|" + "|".join(rule[a] for a in align) + "|"]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
        return "\n".join(lines) + "\n"
    style = {"l": "left", "r": "right", "c": "center"}
    lines = ["<table>", "<thead>",
             "<tr>" + "".join(f'<th style="text-align:{style[a]}">{html.escape(h)}</th>'
                              for h, a in zip(header, align)) + "</tr>",
             "</thead>", "<tbody>"]
    lines += ["<tr>" + "".join(f'<td style="text-align:{style[a]}">{html.escape(c)}</td>'
                               for c, a in zip(row, align)) + "</tr>" for row in body]
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines) + "\n"


def _metric_value(row: Mapping[str, Any], i: int, key: str) -> Optional[float]:
    """A row's ``key`` as a fraction: a number, or the ``"mAP"`` of an AP dict; ``None`` when absent."""
    v = row.get(key)
    if isinstance(v, Mapping):
        v = v.get("mAP")
    return None if v is None else _fraction(v, f"{_label(row, i)} {key}")


def _standard_metric_lines(rows: Sequence[Mapping[str, Any]]) -> List[Tuple[str, Any]]:
    """Table lines AP50, AP@[.5:.95] (mAP over the classes), FROC CPM (percentages) and the malignancy AUC (three
    decimals), each only when some row has it."""
    def auc_cell(r: Mapping[str, Any], i: int) -> str:
        v = _metric_value(r, i, "auc")
        return "-" if v is None or math.isnan(v) else f"{v:.3f}"

    def percent(key: str) -> Any:
        return lambda r, i: format_percent(_metric_value(r, i, key))
    lines = [("AP50 [%]", "ap50", percent("ap50")), ("AP@[.5:.95] [%]", "ap", percent("ap")),
             ("FROC CPM [%]", "froc_cpm", percent("froc_cpm")), ("Malignancy AUC", "auc", auc_cell)]
    return [(title, fn) for title, key, fn in lines if any(r.get(key) is not None for r in rows)]


def results_table(rows: Sequence[Row], kind: Literal["II", "IV", "V"] = "V",
                  fmt: Literal["markdown", "html"] = "markdown", level: float = 0.95) -> str:
    """A result table shaped like the paper's Table II, IV or V, as Markdown or HTML.

    Each row is a dict (or a :class:`MethodResult`) with ``corloc`` (fraction) and ``ci`` ((low, high) fractions
    or ``None``), plus, depending on ``kind``:

    - ``"II"`` (ablation; one line per variant): ``aspect``, ``variant``. Columns Aspect | Variant | CorLoc [%] |
      95% CI [%]; an aspect equal to the line above is left blank, as the paper groups its rows. When any row has
      a ``p_value`` (e.g. against the proposed row, "-" for that row itself) a p-value column is added.
    - ``"IV"`` (self-training; methods as columns, e.g. initial / retrained 50 % / retrained 75 %): ``name``,
      ``n_strong``, ``n_weak``. Lines CorLoc, CI, # strong, # weak.
    - ``"V"`` (comparison with baselines; methods as columns): ``name``, ``n_strong``, ``n_weak``, ``p_value``
      (``None`` for the reference method, shown "-") and ``supervision``. Lines CorLoc, CI, p-value, # strong,
      # weak, level of supervision.

    Tables IV and V add, after the CI (and p-value), the lines "AP50 [%]", "AP@[.5:.95] [%]" (the ``mAP`` of a
    row's ``ap50`` / ``ap`` dict, or a number), "FROC CPM [%]" (``froc_cpm``) and "Malignancy AUC" (``auc``,
    three decimals), each only when some row has that key (rows without it show "-").

    Counts may be integers, strings such as ``"50+4974*0.5"`` or ``None`` ("-").

    Parameters
    ----------
    rows : list of dict or MethodResult
    kind : ``"II"``, ``"IV"`` or ``"V"``.
    fmt : ``"markdown"`` (GitHub pipe table) or ``"html"`` (escaped ``<table>``).
    level : CI coverage, for the header ("95% CI [%]").

    Returns
    -------
    str
        The table, ending with a newline.

    Taught in ``book/08_evaluation.md``.
    """
    if kind not in ("II", "IV", "V"):
        raise ValueError(f"kind must be 'II', 'IV' or 'V' (the paper's tables), got {kind!r}")
    if fmt not in ("markdown", "html"):
        raise ValueError(f"fmt must be 'markdown' or 'html', got {fmt!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    rows = _rows(rows)
    ci_head = f"{100 * float(level):g}% CI [%]"

    def corloc_cell(r: Mapping[str, Any], i: int) -> str:
        return format_percent(_get(r, i, "corloc"), f"{_label(r, i)} corloc")

    def ci_cell(r: Mapping[str, Any], i: int) -> str:
        return format_ci(_get(r, i, "ci"), f"{_label(r, i)} ci")

    if kind == "II":
        header = ["Aspect", "Variant", "CorLoc [%]", ci_head]
        with_p = any(r.get("p_value") is not None for r in rows)
        if with_p:
            header.append("p-value")
        body, previous = [], None
        for i, r in enumerate(rows):
            aspect = _text(r, i, "aspect")
            line = ["" if aspect == previous else aspect, _text(r, i, "variant"), corloc_cell(r, i), ci_cell(r, i)]
            if with_p:
                line.append(format_p_value(r.get("p_value"), f"{_label(r, i)} p_value"))
            body.append(line)
            previous = aspect
        return render_table(header, body, ["l", "l", "r", "r"] + ["r"] * with_p, fmt)

    # Tables IV and V: one column per method.
    header = [""] + [_text(r, i, "name") for i, r in enumerate(rows)]
    lines: List[Tuple[str, Any]] = [
        ("CorLoc [%]", corloc_cell),
        (ci_head, ci_cell),
    ]
    if kind == "V":
        lines.append(("p-value", lambda r, i: format_p_value(r.get("p_value"), f"{_label(r, i)} p_value")))
    lines += _standard_metric_lines(rows)
    lines += [
        ("# strong", lambda r, i: _format_count(_get(r, i, "n_strong"), f"{_label(r, i)} n_strong")),
        ("# weak", lambda r, i: _format_count(_get(r, i, "n_weak"), f"{_label(r, i)} n_weak")),
    ]
    if kind == "V":
        lines.append(("Level of supervision",
                      lambda r, i: "-" if r.get("supervision") is None else str(r["supervision"])))
    body = [[title] + [fn(r, i) for i, r in enumerate(rows)] for title, fn in lines]
    return render_table(header, body, ["l"] + ["r"] * len(rows), fmt)
