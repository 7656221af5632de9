"""The Grafana dashboard and the Prometheus rules use only series /metrics exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from tests.metrics import yaml_subset

pytestmark = pytest.mark.django_db

DOCS = Path(django_settings.BASE_DIR) / "docs"
DASHBOARD = DOCS / "grafana" / "ha-portal.json"
RULES = DOCS / "prometheus" / "ha-portal-rules.yml"

METRIC = re.compile(r"\bha_[a-zA-Z0-9_]+\b")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
TEMPLATE_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def label_names(expr: str) -> set[str]:
    """Label names an expression matches on or groups by."""
    names = set()
    for selector in re.findall(r"\{([^}]*)\}", expr):
        names |= set(MATCHER.findall(selector))
    for group in GROUPING.findall(expr):
        names |= {name.strip() for name in group.split(",") if name.strip()}
    return names


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


def load_rules() -> dict:
    return yaml_subset.load(RULES.read_text())


@pytest.fixture
def exported(known_state, scrape):
    """Metric and label names a scrape of a busy portal exports."""
    got = scrape()
    return got.names(), got.label_names()


# --- the Grafana dashboard -------------------------------------------------------


def test_the_dashboard_is_grafana_json_on_a_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36  # Grafana 10
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_the_dashboard_references_only_exported_series_and_labels(exported):
    names, labels = exported
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    used = set().union(*map(metric_names, exprs))
    assert used - names == set()
    assert set().union(*map(label_names, exprs)) - labels == set()
    assert re.search(r"label_values\(ha_master_info, (\w+)\)", " ".join(exprs)).group(1) in labels


def test_the_dashboard_shows_what_operators_watch():
    exprs = " ".join(dashboard_exprs(json.loads(DASHBOARD.read_text())))
    for name in (
        "ha_master_health",
        "ha_master_queue_length",
        "ha_master_load_share_percent",
        "ha_failovers_total",
        "ha_alerts_open",
    ):
        assert name in exprs, name
    assert re.search(r"rate\(ha_messages_sent_total\{", exprs)
    assert re.search(r"rate\(ha_message_errors_total\{", exprs)
    for q in ("0.5", "0.95"):
        assert re.search(
            rf"histogram_quantile\({q}, sum by \(le, master\) "
            r"\(rate\(ha_health_check_latency_seconds_bucket\{",
            exprs,
        ), q


# --- the Prometheus rules ------------------------------------------------------------


def test_the_rules_file_has_the_shape_prometheus_expects():
    rules = load_rules()
    assert set(rules) == {"groups"}
    group_names = [g["name"] for g in rules["groups"]]
    assert len(group_names) == len(set(group_names))
    for group in rules["groups"]:
        assert set(group) == {"name", "rules"}
        for rule in group["rules"]:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert re.fullmatch(r"(\d+[smhdwy])+", rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in {"critical", "warning"}
            assert {"summary", "description"} <= set(rule["annotations"])
            assert rule["expr"].count("(") == rule["expr"].count(")")


def test_the_rules_mirror_the_portals_critical_alerts_and_warnings():
    rules = {r["alert"]: r for g in load_rules()["groups"] for r in g["rules"]}
    severity = {name: rule["labels"]["severity"] for name, rule in rules.items()}
    for name in ("HaMasterConnectionLost", "HaFailoverInitiated", "HaAllMastersDown"):
        assert severity[name] == "critical", name
    for name in ("HaQueueBacklog", "HaMasterLoadShareHigh"):
        assert severity[name] == "warning", name
    assert "ha_master_health" in rules["HaMasterConnectionLost"]["expr"]
    assert "increase(ha_failovers_total[" in rules["HaFailoverInitiated"]["expr"]
    assert rules["HaQueueBacklog"]["expr"].endswith("> 1000")
    assert rules["HaMasterLoadShareHigh"]["expr"].endswith("> 80")


def test_the_rules_reference_only_exported_series_and_labels(exported):
    names, labels = exported
    for group in load_rules()["groups"]:
        for rule in group["rules"]:
            assert metric_names(rule["expr"]) - names == set(), rule["alert"]
            assert label_names(rule["expr"]) - labels == set(), rule["alert"]
            templated = " ".join(rule["annotations"].values())
            assert set(TEMPLATE_LABEL.findall(templated)) <= labels, rule["alert"]


def test_the_subset_reader_refuses_yaml_it_does_not_understand():
    for source in ("groups: [a, b]", "a: b # note", "a: &x b", "a:\n\tb: c", "a: b\na: c"):
        with pytest.raises(yaml_subset.YamlSubsetError):
            yaml_subset.load(source)
    assert yaml_subset.load("a:\n  - b: 'it''s'\n    c: \"d\"\n  - e\n") == {
        "a": [{"b": "it's", "c": "d"}, "e"]
    }


def test_a_real_yaml_parser_reads_the_rules_the_same_way():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed in this environment")
    assert yaml.safe_load(RULES.read_text()) == load_rules()


# --- promtool, where Debian's prometheus package provides it ------------------------

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH (Debian's prometheus package provides it)"
)


@needs_promtool
def test_promtool_accepts_the_scrape(known_state, scrape):
    body = scrape().body
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_rules():
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
