"""examples/grafana/modeldist.json is built only on series modeldist exports (issue #7).

Every metric name in every PromQL expression must be a series that the real collectors of
``modeldist.metrics`` expose through prometheus_client's default registry (counters with
``_total``, histograms with ``_bucket``/``_sum``/``_count``), and every label it selects on, groups
by or prints must exist on that series. Renaming a metric or a label without updating the dashboard
fails here; so does adding a metric the dashboard does not show.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from modeldist import metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "examples" / "grafana" / "modeldist.json"
TARGET_LABELS = {"job", "instance"}  # added by Prometheus at scrape time to every series
GRAFANA_VARS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"}
PANEL_TYPES = {"timeseries", "stat", "bargauge", "gauge", "table", "text", "heatmap", "piechart"}

AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
                "topk", "quantile", "limitk", "limit_ratio"}
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
    "histogram_stdvar", "histogram_sum", "hour", "idelta", "increase", "irate", "label_join", "label_replace",
    "last_over_time", "ln", "log10", "log2", "mad_over_time", "max_over_time", "min_over_time", "minute", "month",
    "predict_linear", "present_over_time", "quantile_over_time", "rate", "resets", "round", "scalar", "sgn",
    "sort", "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time",
    "sum_over_time", "time", "timestamp", "vector", "year"}
BINARY_KEYWORDS = {"and", "or", "unless", "bool"}

_TOKEN = re.compile(r"""
    (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<dur>(?:\d+(?:ms|[smhdwy]))+(?![\w.]))
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}@])
  | (?P<ws>\s+)
""", re.X)


# --- what modeldist exports -------------------------------------------------------------------

def _collectors() -> list[MetricWrapperBase]:
    return [obj for name in metrics.__all__ if isinstance(obj := getattr(metrics, name), MetricWrapperBase)]


def exported_series() -> dict[str, set[str]]:
    """Series name -> label names, as the default registry would expose them.

    A labelled metric exposes nothing until a child exists, so each one gets a probe child for the
    duration of one ``REGISTRY.collect()``, removed again afterwards.
    """
    probes = []
    try:
        for c in _collectors():
            if c._labelnames:
                values = ["__dashboard_probe__"] * len(c._labelnames)
                c.labels(*values)
                probes.append((c, values))
        families = {c_m.name for c in _collectors() for c_m in c.describe()}
        series: dict[str, set[str]] = {}
        seen = set()
        for family in REGISTRY.collect():
            if family.name in families:
                seen.add(family.name)
                for s in family.samples:
                    series.setdefault(s.name, set()).update(s.labels)
    finally:
        for c, values in probes:
            c.remove(*values)
    assert seen == families, f"metrics not registered in prometheus_client.REGISTRY: {families - seen}"
    return series


@pytest.fixture(scope="module")
def series() -> dict[str, set[str]]:
    return exported_series()


# --- a small PromQL reader -------------------------------------------------------------------

@dataclass
class Selector:
    name: str
    labels: set[str] = field(default_factory=set)


@dataclass
class Query:
    selectors: list[Selector]
    groupings: list[tuple[tuple[str, ...], list[Selector]]]  # (by/on labels, selectors they apply to)
    variables: set[str]


def tokenize(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot read {expr[pos:pos + 20]!r} in {expr!r}")
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out


class _Reader:
    def __init__(self, expr: str):
        self.expr = expr
        self.toks = tokenize(expr)
        self.i = 0
        self.groupings: list[tuple[tuple[str, ...], list[Selector]]] = []
        self.variables = {re.sub(r"^\$\{?|[:}].*$|\}$", "", v) for k, v in self.toks if k == "var"}
        for k, v in self.toks:  # variables inside label matcher strings: "$job"
            if k == "str":
                self.variables.update(re.findall(r"\$\{?(\w+)", v))

    def peek(self) -> tuple[str | None, str | None]:
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def expect(self, value: str) -> None:
        kind, got = self.peek()
        if got != value:
            raise ValueError(f"expected {value!r}, got {got!r} at token {self.i} of {self.expr!r}")
        self.i += 1

    def names(self) -> tuple[str, ...]:
        self.expect("(")
        out = []
        while self.peek()[1] != ")":
            kind, val = self.peek()
            if kind == "ident":
                out.append(val)
            elif val != ",":
                raise ValueError(f"bad label list in {self.expr!r}")
            self.i += 1
        self.expect(")")
        return tuple(out)

    def matchers(self) -> set[str]:
        self.expect("{")
        labels = set()
        while self.peek()[1] != "}":
            kind, val = self.peek()
            if kind != "ident":
                raise ValueError(f"bad label matcher in {self.expr!r}")
            self.i += 1
            kind, op = self.peek()
            if op not in ("=", "!=", "=~", "!~"):
                raise ValueError(f"bad label matcher operator {op!r} in {self.expr!r}")
            self.i += 1
            if self.peek()[0] not in ("str", "var"):
                raise ValueError(f"label matcher without a value in {self.expr!r}")
            self.i += 1
            labels.add(val)
            if self.peek()[1] == ",":
                self.i += 1
        self.expect("}")
        return labels

    def sequence(self, closer: str | None) -> list[Selector]:
        selectors: list[Selector] = []
        matching: list[tuple[str, ...]] = []
        while True:
            kind, val = self.peek()
            if kind is None:
                if closer is not None:
                    raise ValueError(f"unbalanced parentheses in {self.expr!r}")
                break
            if kind == "op" and val == closer:
                break
            self.i += 1
            if kind == "ident" and val in AGGREGATIONS:
                grouping: tuple[str, ...] = ()
                if self.peek()[1] in ("by", "without"):
                    self.i += 1
                    grouping = self.names()
                self.expect("(")
                inner = self.sequence(")")
                self.expect(")")
                if self.peek()[1] in ("by", "without"):
                    self.i += 1
                    grouping = self.names()
                if grouping:
                    self.groupings.append((grouping, inner))
                selectors += inner
            elif kind == "ident" and val in FUNCTIONS:
                self.expect("(")
                selectors += self.sequence(")")
                self.expect(")")
            elif kind == "ident" and val in ("on", "ignoring"):
                matching.append(self.names())
            elif kind == "ident" and val in ("group_left", "group_right"):
                if self.peek()[1] == "(":
                    matching.append(self.names())
            elif kind == "ident" and val in ("by", "without"):
                raise ValueError(f"{val!r} outside an aggregation in {self.expr!r}")
            elif kind == "ident" and val in BINARY_KEYWORDS:
                pass
            elif kind == "ident" and val == "offset":
                if self.peek()[0] != "dur":
                    raise ValueError(f"offset without a duration in {self.expr!r}")
                self.i += 1
            elif kind == "ident":
                if self.peek()[1] == "(":
                    raise ValueError(f"unknown PromQL function {val!r} in {self.expr!r}")
                labels = self.matchers() if self.peek()[1] == "{" else set()
                selectors.append(Selector(val, labels))
            elif kind == "op" and val == "(":
                selectors += self.sequence(")")
                self.expect(")")
            elif kind == "op" and val in ("{", "}", ")"):
                raise ValueError(f"unexpected {val!r} in {self.expr!r}")
            # numbers, strings, variables, ranges, durations, commas and operators carry no names
        for labels in matching:
            self.groupings.append((labels, selectors))
        return selectors


def read_promql(expr: str) -> Query:
    r = _Reader(expr)
    selectors = r.sequence(None)
    return Query(selectors, r.groupings, r.variables)


def problems(expr: str, series: dict[str, set[str]], legend: str = "") -> list[str]:
    """What in ``expr`` (and its legend) is not something modeldist exports; empty when all is."""
    q = read_promql(expr)
    out = []
    if not q.selectors:
        out.append(f"no metric in {expr!r}")
    for s in q.selectors:
        if s.name not in series:
            out.append(f"{s.name!r} is not a series modeldist exports")
            continue
        for label in s.labels - series[s.name] - TARGET_LABELS - {"__name__"}:
            out.append(f"{s.name!r} has no label {label!r}")
    for labels, selectors in q.groupings:
        for s in selectors:
            for label in set(labels) - series.get(s.name, set()) - TARGET_LABELS:
                out.append(f"grouping by {label!r}, which {s.name!r} does not have")
    known = set().union(*(series.get(s.name, set()) for s in q.selectors), TARGET_LABELS)
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        if label not in known:
            out.append(f"legend prints {label!r}, a label none of the expression's series has")
    return out


# --- the dashboard ---------------------------------------------------------------------------

def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out += p.get("panels", [])  # panels inside a collapsed row
    return out


def data_panels(dashboard: dict) -> list[dict]:
    return [p for p in all_panels(dashboard) if p.get("type") != "row"]


def variable_names(dashboard: dict) -> set[str]:
    return {v["name"] for v in dashboard["templating"]["list"]}


def test_dashboard_structure():
    d = load_dashboard()
    assert d["title"] and d["uid"] and 36 <= d["schemaVersion"] <= 41
    panels = all_panels(d)
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), f"panel ids not unique: {ids}"
    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "hwxy"), p["title"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    vars_ = {v["name"]: v for v in d["templating"]["list"]}
    assert vars_["DS_PROMETHEUS"]["type"] == "datasource" and vars_["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(vars_)
    for p in data_panels(d):
        assert p["type"] in PANEL_TYPES, p["title"]
        assert p.get("title") and len(p.get("description", "")) >= 40, f"panel {p['id']} needs a title and description"
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], f"{p['title']!r} has no targets"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            assert t.get("datasource", p["datasource"]) == p["datasource"], p["title"]


def test_every_expression_uses_only_exported_series_and_labels(series):
    d = load_dashboard()
    known_vars = variable_names(d) | GRAFANA_VARS
    errors = []
    for p in data_panels(d):
        for t in p["targets"]:
            where = f"panel {p['id']} {p['title']!r} target {t['refId']}"
            try:
                errors += [f"{where}: {e}" for e in problems(t["expr"], series, t.get("legendFormat", ""))]
                errors += [f"{where}: unknown variable ${v}" for v in read_promql(t["expr"]).variables - known_vars]
            except ValueError as e:
                errors.append(f"{where}: {e}")
    assert not errors, "\n".join(errors)


def test_template_variables_use_exported_series(series):
    d = load_dashboard()
    for v in d["templating"]["list"]:
        if v["type"] != "query":
            continue
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", query)
        assert m, f"variable {v['name']}: expected label_values(series, label), got {query!r}"
        assert problems(m.group(1), series) == [], v["name"]
        name = read_promql(m.group(1)).selectors[0].name
        assert m.group(2) in series[name] | TARGET_LABELS, v["name"]
        assert v["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, v["name"]


def test_dashboard_shows_every_metric(series):
    """A metric added to modeldist/metrics.py belongs on the dashboard too."""
    used = {s.name for p in data_panels(load_dashboard()) for t in p["targets"]
            for s in read_promql(t["expr"]).selectors}
    families = {m.name for c in _collectors() for m in c.describe()}
    missing = {f for f in families if not any(u == f or (u.startswith(f + "_") and u not in families)
                                              for u in used)}
    assert not missing, f"metrics exported but not on examples/grafana/modeldist.json: {sorted(missing)}"


def test_checker_catches_renames_and_bad_labels(series):
    """The checker itself: a renamed metric, a missing label or an unknown function is reported."""
    assert problems('sum by (source) (rate(modeldist_received_bytes_total{job=~"$job"}[$__rate_interval]))',
                    series, "{{source}}") == []
    assert problems("histogram_quantile(0.99, sum by (le) (rate(modeldist_piece_seconds_bucket[5m])))", series) == []
    assert problems("rate(modeldist_received_bytes[5m])", series)             # counter without _total
    assert problems("rate(modeldist_recv_bytes_total[5m])", series)           # renamed
    assert problems("modeldist_piece_seconds_total", series)                  # histogram has no _total
    assert problems('rate(modeldist_pieces_total{reason="x"}[5m])', series)   # label it does not have
    assert problems("sum by (model) (rate(modeldist_pieces_total[5m]))", series)
    assert problems("sum by (le) (rate(modeldist_piece_seconds_sum[5m]))", series)   # le only on _bucket
    assert problems("rate(modeldist_pieces_total[5m])", series, "{{stage}}")
    with pytest.raises(ValueError):
        read_promql("ratee(modeldist_pieces_total[5m])")
    q = read_promql('sum(rate(a_total{x="1"}[5m] offset 1h)) / on(instance) group_left(y) max by (z) (b)')
    assert [s.name for s in q.selectors] == ["a_total", "b"] and q.selectors[0].labels == {"x"}
    assert (("z",), [q.selectors[1]]) in q.groupings and ("instance",) in [g for g, _ in q.groupings]


def test_readme_metrics_table_is_current(capsys):
    """examples/grafana/README.md carries the output of metrics_table.py, regenerated when metrics change."""
    import runpy

    runpy.run_path(str(DASHBOARD.parent / "metrics_table.py"), run_name="__main__")
    table = capsys.readouterr().out
    assert table.count("\n") >= 3
    assert table in (DASHBOARD.parent / "README.md").read_text(), \
        "regenerate the table in examples/grafana/README.md with examples/grafana/metrics_table.py"
