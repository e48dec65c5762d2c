"""PromQL, cheaply: the metric names, matchers, comparisons and aggregations of an expression, by pattern.

Enough for the conventions the checks enforce; `promtool` is what parses the expressions for real.
"""
import re

from .common import recording_rules

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
            "bool", "inf", "nan"}
def _strip(expr):
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)


def metric_names(expr):
    """Metric and recording-rule names a PromQL expression selects (not functions, keywords or labels)."""
    s = _strip(expr)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        before = s[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":
            continue  # the exponent of 1e6, a duration unit
        if s[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group(0).lower() in KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def equality_matchers(expr):
    """(metric, label, value) for every `metric{label="value"}` equality matcher (not !=, =~, !~)."""
    out = []
    for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        for lm in re.finditer(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"', m.group(2)):
            if lm.group(2) == "=":
                out.append((m.group(1), lm.group(1), lm.group(3)))
    return out


def comparisons(expr):
    """(name, operator, number) for every `name > number` style comparison, in order."""
    return [(m.group(1), m.group(2), float(m.group(3)))
            for m in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(>=|<=|>|<|==|!=)\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)\b",
                                 expr)]


AGGREGATIONS = ("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
                "topk", "quantile", "limitk", "limit_ratio")
def _closing(s, i):
    """Index just past the parenthesis that closes the one opening at s[i]."""
    depth = 0
    for j in range(i, len(s)):
        depth += {"(": 1, ")": -1}.get(s[j], 0)
        if depth == 0:
            return j + 1
    return len(s)


def aggregations(expr):
    """(operator, 'by'/'without'/None, [labels]) for every aggregation in `expr`, prefix or suffix clause."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    out = []
    for m in re.finditer(r"\b(" + "|".join(AGGREGATIONS) + r")\s*(?:(by|without)\s*\(([^)]*)\)\s*)?\(", s):
        if m.group(2):
            out.append((m.group(1), m.group(2), [x.strip() for x in m.group(3).split(",") if x.strip()]))
            continue
        after = s[_closing(s, m.end() - 1):]
        suffix = re.match(r"\s*(by|without)\s*\(([^)]*)\)", after)
        if suffix:
            out.append((m.group(1), suffix.group(1), [x.strip() for x in suffix.group(2).split(",") if x.strip()]))
        else:
            out.append((m.group(1), None, []))
    return out


def alert_threshold(expr):
    """The comparison that defines an alert: its first `recording_rule > number`."""
    records = recording_rules()
    for name, op, value in comparisons(expr):
        if name in records:
            return name, op, value
    return None


def quantile_histograms(expr):
    """Histogram families whose buckets a histogram_quantile in `expr` reads."""
    if "histogram_quantile" not in expr:
        return set()
    return {n[: -len("_bucket")] for n in metric_names(expr) if n.endswith("_bucket")}
