"""dashboards/lift3d.json: every query names series the service exports, and Grafana can load the JSON.

The PromQL in the dashboard is read by a small tokenizer (below): metric selectors with their label matchers, the
functions around them and the ``by (...)`` lists. Checked against :data:`lift3d.metrics.METRICS` through
:func:`~lift3d.metrics.exported_series` (Ray's ``ray_`` prefix, ``_total`` on counters, ``_bucket`` /
``_sum`` / ``_count`` for histograms), plus the few Ray Serve built-in metrics listed in :data:`SERVE_BUILTINS`,
each with the Ray source file that defines it (checked against the installed Ray). How Ray names the exported
series is checked by driving Ray's own exporter (:func:`test_ray_exporter_names_series_as_the_dashboard_expects`).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lift3d.metrics import METRICS, MetricSpec, exported_series

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "dashboards" / "lift3d.json"

SERVE_TAGS = ("deployment", "replica", "application")
"""Tags ray.serve.metrics adds to every metric recorded in a replica (``ray/serve/metrics.py``)."""


@dataclass(frozen=True)
class BuiltIn:
    """A Ray Serve metric the dashboard uses: where Ray 2.60 defines it and the labels it carries."""

    kind: str  # "counter", "gauge" or "histogram"
    source: str  # file under the installed ``ray`` package
    literal: str  # the name as written in that file
    labels: tuple[str, ...]


SERVE_BUILTINS: dict[str, BuiltIn] = {
    # RequestIngressMetrics.__init__, protocol HTTP: tag_keys method, route, application, status_code.
    "serve_http_request_latency_ms": BuiltIn(
        "histogram", "serve/_private/request_ingress_metrics.py", 'f"serve_{protocol_name}_request_latency_ms"',
        ("method", "route", "application", "status_code")),
    # DeploymentState (controller): tag_keys deployment, application (+ replica with high-cardinality tags on).
    "serve_deployment_replica_healthy": BuiltIn(
        "gauge", "serve/_private/deployment_state.py", '"serve_deployment_replica_healthy"',
        ("deployment", "application", "replica")),
    # ReplicaMetricsManager (replica.py), a ray.serve.metrics Gauge: the Serve tags.
    "serve_replica_processing_queries": BuiltIn(
        "gauge", "serve/_private/replica.py", '"serve_replica_processing_queries"', SERVE_TAGS),
    # ReplicaMetricsManager (replica.py), a ray.serve.metrics Histogram: tag route plus the Serve tags.
    "serve_deployment_processing_latency_ms": BuiltIn(
        "histogram", "serve/_private/replica.py", '"serve_deployment_processing_latency_ms"', ("route",) + SERVE_TAGS),
}

GRAFANA_VARIABLES = {"__rate_interval", "__range", "__interval", "__range_s", "__interval_ms", "__all"}
FUNCTIONS = {"rate", "irate", "increase", "histogram_quantile", "clamp_min", "clamp_max", "abs", "round",
             "label_replace", "vector", "scalar", "time", "delta", "deriv", "avg_over_time", "max_over_time"}
AGGREGATIONS = {"sum", "avg", "min", "max", "count", "topk", "bottomk", "quantile", "group", "stddev", "stdvar"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"bool", "offset", "and", "or", "unless"}
PANEL_TYPES = {"row", "timeseries", "stat", "bargauge", "table", "gauge", "heatmap", "text"}


# ------------------------------------------------------------------------------------------------ what is exported
@dataclass(frozen=True)
class Series:
    """One exported series name: its kind (``counter``, ``gauge``, or a histogram's ``bucket``/``sum``/``count``)
    and the labels it carries."""

    kind: str
    labels: frozenset[str]


def exported() -> dict[str, Series]:
    """Every series name a Prometheus scrape of the lift3d graph shows that the dashboard may use."""
    table: dict[str, Series] = {}
    specs = [(spec.kind, spec.labels + SERVE_TAGS, exported_series(spec)) for spec in METRICS.values()]
    for name, builtin in SERVE_BUILTINS.items():
        specs.append((builtin.kind, builtin.labels, exported_series(MetricSpec(name, builtin.kind, "", builtin.labels))))
    for kind, labels, names in specs:
        for series in names:
            if kind == "histogram":
                part = series.rsplit("_", 1)[1]
                table[series] = Series(part, frozenset(labels) | ({"le"} if part == "bucket" else set()))
            else:
                table[series] = Series(kind, frozenset(labels))
    return table


# ------------------------------------------------------------------------------------------------ PromQL reading
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}])
""", re.VERBOSE)


@dataclass
class Selector:
    metric: str
    matchers: dict[str, str]  # label -> operator
    inside: tuple[str, ...]  # enclosing functions and aggregations, outermost first


@dataclass
class Grouping:
    keyword: str
    labels: tuple[str, ...]
    inside: tuple[str, ...]


@dataclass
class Parsed:
    selectors: list[Selector] = field(default_factory=list)
    groupings: list[Grouping] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)


def tokenize(expr: str) -> list[tuple[str, str]]:
    """(kind, text) tokens; raises ValueError on a character PromQL does not have."""
    tokens, position = [], 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"unexpected {expr[position:position + 10]!r} at {position}")
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group()))
        position = match.end()
    return tokens


def parse(expr: str) -> Parsed:
    """Selectors, groupings and calls of a PromQL expression (Grafana variables allowed in ranges and strings).

    Raises:
        ValueError: unbalanced brackets, a malformed matcher or grouping list, an unknown function.
    """
    reader = _Reader(tokenize(expr), expr)
    try:
        reader.run()
    except IndexError:
        raise ValueError(f"truncated expression {expr!r}") from None
    return reader.parsed


class _Reader:
    """One pass over the tokens, keeping the stack of open calls (``"("`` for a plain parenthesis)."""

    def __init__(self, tokens: list[tuple[str, str]], expr: str) -> None:
        self.tokens, self.expr, self.i = tokens, expr, 0
        self.parsed, self.stack, self.pending = Parsed(), [], None

    def peek(self, offset: int = 0) -> str | None:
        j = self.i + offset
        return self.tokens[j][1] if j < len(self.tokens) else None

    def expect(self, kind_or_text: str) -> str:
        kind, text = self.tokens[self.i]
        if kind_or_text not in (kind, text):
            raise ValueError(f"expected {kind_or_text!r}, found {text!r} in {self.expr!r}")
        self.i += 1
        return text

    def inside(self) -> tuple[str, ...]:
        return tuple(s for s in self.stack if s != "(")

    def label_list(self, optional: bool) -> tuple[str, ...]:
        if optional and self.peek() != "(":
            return ()
        self.expect("(")
        labels = []
        while self.peek() != ")":
            labels.append(self.expect("ident"))
            if self.peek() == ",":
                self.expect(",")
        self.expect(")")
        return tuple(labels)

    def matchers(self) -> dict[str, str]:
        found: dict[str, str] = {}
        if self.peek() != "{":
            return found
        self.expect("{")
        while self.peek() != "}":
            label = self.expect("ident")
            operator = self.tokens[self.i][1]
            if operator not in ("=", "!=", "=~", "!~"):
                raise ValueError(f"bad matcher operator {operator!r} in {self.expr!r}")
            self.i += 1
            self.expect("string")
            found[label] = operator
            if self.peek() == ",":
                self.expect(",")
        self.expect("}")
        return found

    def run(self) -> None:
        while self.i < len(self.tokens):
            kind, text = self.tokens[self.i]
            following = self.peek(1)
            if kind == "ident" and text in GROUPING:
                self.i += 1
                optional = text in ("group_left", "group_right")
                self.parsed.groupings.append(Grouping(text, self.label_list(optional), self.inside()))
            elif kind == "ident" and text in KEYWORDS:
                self.i += 1
            elif kind == "ident" and (following == "(" or (text in AGGREGATIONS and following in ("by", "without"))):
                if text not in FUNCTIONS | AGGREGATIONS:
                    raise ValueError(f"unknown function {text!r} in {self.expr!r}")
                self.pending = text
                self.parsed.calls.append(text)
                self.i += 1
            elif kind == "ident":  # a metric selector, maybe with matchers
                self.i += 1
                self.parsed.selectors.append(Selector(text, self.matchers(), self.inside()))
            else:
                if text == "(":
                    self.stack.append(self.pending or "(")
                    self.pending = None
                elif text == ")":
                    if not self.stack:
                        raise ValueError(f"unbalanced ')' in {self.expr!r}")
                    self.stack.pop()
                elif text in ("{", "}"):
                    raise ValueError(f"stray {text!r} in {self.expr!r}")
                self.i += 1
        if self.stack:
            raise ValueError(f"unclosed '(' in {self.expr!r}")


# ------------------------------------------------------------------------------------------------ dashboard walking
def all_panels(dashboard: dict) -> list[dict]:
    """Top-level panels and the panels nested in (collapsed) rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every Prometheus query variable (``label_values(m, l)`` becomes
    the selector ``m{l!=""}`` so that its metric and label are checked too)."""
    found = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        label_values = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", query)
        if label_values:
            query = f'{label_values.group(1)}{{{label_values.group(2)}!=""}}'
        found.append((f"variable {variable['name']}", query))
    return found


def query_problems(where: str, expr: str, series: dict[str, Series], legend: str = "") -> list[str]:
    """What is wrong with one query: unknown series or labels, rate() over a gauge, a quantile without ``le``."""
    try:
        parsed = parse(expr)
    except ValueError as exc:
        return [f"{where}: {exc}"]
    problems = []
    labels_here: set[str] = set()
    for selector in parsed.selectors:
        known = series.get(selector.metric)
        if known is None:
            problems.append(f"{where}: {selector.metric} is not exported by lift3d or a listed Ray Serve metric")
            continue
        labels_here |= known.labels
        for label in selector.matchers:
            if label not in known.labels:
                problems.append(f"{where}: {selector.metric} has no label {label!r}")
        innermost = selector.inside[-1] if selector.inside else None
        if innermost in ("rate", "irate", "increase") and known.kind == "gauge":
            problems.append(f"{where}: {innermost}() over the gauge {selector.metric}")
        if "histogram_quantile" in selector.inside and known.kind != "bucket":
            problems.append(f"{where}: histogram_quantile over {selector.metric}, not a _bucket series")
    for grouping in parsed.groupings:
        for label in grouping.labels:
            if label not in labels_here:
                problems.append(f"{where}: {grouping.keyword} ({label}) names no label of the series queried")
        if "histogram_quantile" in grouping.inside and "le" not in grouping.labels:
            problems.append(f"{where}: aggregation inside histogram_quantile drops 'le'")
    grouped = {label for grouping in parsed.groupings for label in grouping.labels}
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        if label not in grouped:
            problems.append(f"{where}: legend {{{{{label}}}}} is not a label the query keeps")
    return problems


def dashboard_problems(dashboard: dict) -> list[str]:
    series = exported()
    legends = {(f"panel {p['id']} {p['title']!r} {t['refId']}"): t.get("legendFormat", "")
               for p in all_panels(dashboard) for t in p.get("targets", [])}
    problems = []
    for where, expr in queries(dashboard):
        problems += query_problems(where, expr, series, legends.get(where, ""))
    return problems


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


# ------------------------------------------------------------------------------------------------ tests: queries
def test_the_tokenizer_reads_selectors_groupings_and_calls():
    parsed = parse('histogram_quantile(0.95, sum by (le, stage) (rate(ray_x_bucket{application=~"$app", '
                   'stage!="a"}[$__rate_interval]))) / on (stage) group_left sum(ray_y_total)')
    assert [(s.metric, s.matchers, s.inside) for s in parsed.selectors] == [
        ("ray_x_bucket", {"application": "=~", "stage": "!="}, ("histogram_quantile", "sum", "rate")),
        ("ray_y_total", {}, ("sum",)),
    ]
    assert [(g.keyword, g.labels, g.inside) for g in parsed.groupings] == [
        ("by", ("le", "stage"), ("histogram_quantile",)), ("on", ("stage",), ()), ("group_left", (), ())]
    assert parsed.calls == ["histogram_quantile", "sum", "rate", "sum"]
    for bad in ("sum(rate(x[5m])", "sum(x))", 'x{a="b"', "frobnicate(x)", 'x{a~"b"}', "x # y"):
        with pytest.raises(ValueError):
            parse(bad)


def test_every_query_uses_exported_series_and_labels(dashboard):
    found = queries(dashboard)
    assert len(found) >= 25  # every panel target plus the application variable
    assert dashboard_problems(dashboard) == []


def test_the_dashboard_covers_what_the_service_exports(dashboard):
    used = {s.metric for _, expr in queries(dashboard) for s in parse(expr).selectors}
    metric_of = {series: spec.name for spec in METRICS.values() for series in exported_series(spec)}
    assert {metric_of[name] for name in used if name in metric_of} == set(METRICS)  # each metric has a panel
    assert {"ray_lift3d_requests_total", "ray_lift3d_queue_depth", "ray_lift3d_jobs_finished_total",
            "ray_lift3d_stage_seconds_bucket", "ray_lift3d_gpu_seconds_total", "ray_lift3d_request_cost_usd_bucket",
            "ray_lift3d_spent_usd_total", "ray_lift3d_sds_batch_size_bucket",
            "ray_lift3d_credits_spent_total"} <= used
    quantiles = {re.search(r"histogram_quantile\(([\d.]+), .*?(ray_lift3d_stage_seconds_bucket)", expr).group(1)
                 for _, expr in queries(dashboard) if "ray_lift3d_stage_seconds_bucket" in expr}
    assert quantiles == {"0.5", "0.95", "0.99"}
    assert any(expr.startswith("topk(10, sum by (key_id)") for _, expr in queries(dashboard))


@pytest.mark.parametrize(("old", "new", "message"), [
    ("ray_lift3d_queue_depth", "ray_lift3d_queue_length", "ray_lift3d_queue_length is not exported"),
    ("ray_lift3d_requests_total", "ray_lift3d_requests", "ray_lift3d_requests is not exported"),  # counter suffix
    ("ray_lift3d_stage_seconds_bucket", "ray_lift3d_stage_seconds", "ray_lift3d_stage_seconds is not exported"),
    ("sum by (key_id)", "sum by (api_key)", "by (api_key) names no label"),
    ("sum by (le, stage)", "sum by (stage)", "drops 'le'"),
    ('(ray_lift3d_queue_depth{application=~\\"$application\\"})',
     '(rate(ray_lift3d_queue_depth{application=~\\"$application\\"}[5m]))',
     "rate() over the gauge ray_lift3d_queue_depth"),
    ("label_values(ray_lift3d_requests_total, application)", "label_values(ray_lift3d_requests_total, app)",
     "has no label 'app'"),
])
def test_a_mutated_dashboard_is_rejected(dashboard, old, new, message):
    text = json.dumps(dashboard)
    assert old in text
    mutated = json.loads(text.replace(old, new))
    problems = dashboard_problems(mutated)
    assert problems and any(message in problem for problem in problems), problems


def test_a_legend_naming_a_dropped_label_is_rejected(dashboard):
    mutated = copy.deepcopy(dashboard)
    target = next(t for p in all_panels(mutated) for t in p.get("targets", []) if t["legendFormat"] == "{{stage}}")
    target["legendFormat"] = "{{kind}}"
    assert any("legend {{kind}}" in problem for problem in dashboard_problems(mutated))


def test_listed_serve_builtins_are_defined_in_the_installed_ray():
    ray_dir = Path(importlib.util.find_spec("ray").origin).parent
    for name, builtin in SERVE_BUILTINS.items():
        source = (ray_dir / builtin.source).read_text()
        assert builtin.literal in source, (name, builtin.source)
    # the f-string above is instantiated for HTTP: RequestProtocol.HTTP lower-cased
    common = (ray_dir / "serve/_private/common.py").read_text()
    assert re.search(r'HTTP\s*=\s*"HTTP"', common)


def test_ray_exporter_names_series_as_the_dashboard_expects():
    """Ray's metrics agent (its OpenTelemetry path, the default in Ray 2.60: ``RAY_enable_open_telemetry``)
    registers each metric a worker reports as ``ray_<name>`` in an OpenTelemetry meter read by
    ``PrometheusMetricReader``; drive that recorder with every metric of METRICS as the agent does (values and
    bucket bounds as doubles, like the C++ side sends them), scrape it, and compare with :func:`exported_series`.
    A subprocess, since the recorder sets the process-wide meter provider."""
    script = textwrap.dedent("""
        import json
        from prometheus_client import REGISTRY, generate_latest
        from prometheus_client.parser import text_string_to_metric_families
        from ray._private.telemetry.open_telemetry_metric_recorder import OpenTelemetryMetricRecorder
        from lift3d.metrics import METRICS

        recorder = OpenTelemetryMetricRecorder()
        for spec in METRICS.values():
            tags = {label: "x" for label in spec.labels + ("deployment", "replica", "application")}
            if spec.kind == "counter":        # ray.util.metrics.Counter -> monotonic sum -> counter
                recorder.register_counter_metric(spec.name, spec.description)
                recorder.set_metric_value(spec.name, tags, 2.0)
            elif spec.kind == "gauge":
                recorder.register_gauge_metric(spec.name, spec.description)
                recorder.set_metric_value(spec.name, tags, 3.0)
            else:
                recorder.register_histogram_metric(spec.name, spec.description, [float(b) for b in spec.buckets])
                counts = [0] * (len(spec.buckets) + 1)
                counts[1] = 2
                recorder.record_histogram_aggregated_batch(spec.name, [{"tags": tags, "bucket_counts": counts}])
        samples = {}
        for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
            for sample in family.samples:
                if sample.name.startswith("ray_lift3d_"):
                    samples.setdefault(sample.name, []).append([sample.labels, sample.value])
        print(json.dumps(samples))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    samples = json.loads(run.stdout.strip().splitlines()[-1])
    expected = {name for spec in METRICS.values() for name in exported_series(spec)}
    assert set(samples) == expected
    assert samples["ray_lift3d_requests_total"][0][1] == 2.0
    assert samples["ray_lift3d_queue_depth"][0][1] == 3.0
    assert {labels["status"] for labels, _ in samples["ray_lift3d_jobs_finished_total"]} == {"x"}
    # two observations in the second bucket: exact counts and buckets, but a _sum rebuilt from the bucket midpoint
    # (hence the exact lift3d_spent_usd and lift3d_sds_requests counters beside the histograms)
    buckets = {labels["le"]: value for labels, value in samples["ray_lift3d_sds_batch_size_bucket"]}
    assert (buckets["1.0"], buckets["2.0"], buckets["+Inf"]) == (0.0, 2.0, 2.0)
    assert samples["ray_lift3d_sds_batch_size_count"][0][1] == 2.0
    assert samples["ray_lift3d_sds_batch_size_sum"][0][1] == pytest.approx(2 * 1.5)


def test_ray_metrics_record_each_metric_with_its_labels(monkeypatch):
    """deployments.metrics.RayMetrics records what the new panels need, with exactly the tags of METRICS (Ray
    raises on a missing tag); the Cython recorder is replaced by a list."""
    from deployments.metrics import RayMetrics

    metrics = RayMetrics()
    recorded: list[tuple[str, float, dict]] = []
    for name, metric in metrics._metrics.items():
        monkeypatch.setattr(metric, "_metric", _Recorder(name, recorded))
    metrics.observe_job("image-to-3d", "succeeded", 40.0, {"sds_training": 30.0}, {"sds_training": 15.0}, 0.004)
    metrics.observe_job("image-to-3d", "failed", 5.0, {}, {}, None)
    metrics.count_finished_job("text-to-3d", "failed", "internal_error")
    metrics.count_finished_job("image-to-3d", "succeeded")
    metrics.observe_sds_batch(3)
    metrics.set_queue_depth(4, 1)
    by_name: dict[str, list[tuple[float, dict]]] = {}
    for name, value, tags in recorded:
        assert set(tags) == set(METRICS[name].labels), (name, tags)
        by_name.setdefault(name, []).append((value, tags))
    assert by_name["lift3d_spent_usd"] == [(0.004, {"kind": "image-to-3d"})]
    assert by_name["lift3d_request_cost_usd"] == [(0.004, {"kind": "image-to-3d"})]
    assert by_name["lift3d_jobs_finished"] == [
        (1, {"kind": "text-to-3d", "status": "failed", "error": "internal_error"}),
        (1, {"kind": "image-to-3d", "status": "succeeded", "error": ""})]
    assert by_name["lift3d_sds_requests"] == [(3, {})] and by_name["lift3d_sds_batch_size"] == [(3, {})]
    assert by_name["lift3d_gpu_seconds"] == [(15.0, {"stage": "sds_training"})]
    assert sorted(by_name["lift3d_queue_depth"], key=lambda x: x[1]["status"]) == [
        (4, {"status": "queued"}), (1, {"status": "running"})]


class _Recorder:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def record(self, value, tags=None):
        self.log.append((self.name, value, dict(tags or {})))


def test_finished_jobs_hook_counts_each_job_once_on_its_first_final_write():
    from types import SimpleNamespace

    from lift3d.service.metrics import ServiceMetrics, count_finished_jobs, parse_exposition

    def record(status, error=None):
        terminal = status in ("succeeded", "failed", "canceled")
        return SimpleNamespace(kind="image-to-3d", status=status, terminal=terminal,
                               error=SimpleNamespace(name=error) if error else None)

    metrics = ServiceMetrics()
    hook = count_finished_jobs(metrics)
    hook(None, record("queued"), record("running"))  # not final
    hook(None, record("running"), record("failed", "invalid_parameters"))
    hook(None, record("failed", "invalid_parameters"), record("failed", "invalid_parameters"))  # rewrite: no count
    hook(None, record("running"), record("succeeded"))
    samples = parse_exposition(metrics.exposition())["lift3d_jobs_finished"]
    counts = {(s.labels["status"], s.labels["error"]): s.value for s in samples if s.name.endswith("_total")}
    assert counts == {("failed", "invalid_parameters"): 1.0, ("succeeded", ""): 1.0}


# ------------------------------------------------------------------------------------------------ tests: Grafana
def test_dashboard_is_loadable_grafana_json(dashboard):
    assert (dashboard["uid"], dashboard["title"]) == ("lift3d-service", "lift3d")
    assert dashboard["schemaVersion"] >= 36 and dashboard["id"] is None  # Grafana 9.x/10+; import creates the id
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = all_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    for panel in panels:
        assert panel["type"] in PANEL_TYPES and panel["title"], panel.get("id")
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"} and all(isinstance(v, int) and v >= 0 for v in grid.values())
        assert grid["h"] > 0 and 0 < grid["w"] and grid["x"] + grid["w"] <= 24, panel["id"]
        if panel["type"] == "row":
            assert grid["w"] == 24 and (panel["panels"] != []) == panel["collapsed"], panel["id"]
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["id"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["id"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"].strip()
    top = [p["gridPos"] for p in dashboard["panels"]]
    nested = [[c["gridPos"] for c in p.get("panels", [])] for p in dashboard["panels"]]
    for group in [top] + nested:
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                assert not _overlap(group[a], group[b]), (group[a], group[b])


def test_every_variable_a_query_uses_is_defined(dashboard):
    defined = {v["name"] for v in dashboard["templating"]["list"]} | GRAFANA_VARIABLES
    text = json.dumps(dashboard["panels"]) + json.dumps(dashboard["templating"])
    used = set(re.findall(r"\$\{?(\w+)", text))
    assert used <= defined, used - defined
    assert {"datasource", "application", "__rate_interval", "__range"} <= used


def _overlap(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
