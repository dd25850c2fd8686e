"""The Grafana dashboard shipped in deploy/grafana: valid JSON Grafana can import, and every metric
its panels query is one /metrics really serves (a renamed metric would leave a panel silently empty)."""

from __future__ import annotations

import json
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from infra.metrics import attempt_observe, delivery_outcome_count
from tests.ops.conftest import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "hub-dashboard.json"

# What PromQL spells with a name that is not a metric's.
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, aggregations,
    keywords, label names or values, ranges or dashboard variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges such as [$__rate_interval]
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # dashboard variables
    text = re.sub(r"\b\d[\w.]*", " ", text)  # numbers and durations (0.99, 5m)
    names = set()
    for match in _NAME.finditer(text):
        name, rest = match.group(), text[match.end() :].lstrip()
        if rest.startswith("(") or name in _KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_names_are_read_from_promql():
    expr = (
        'histogram_quantile(0.99, sum by (le, outcome) (rate(hub_a_bucket{outcome!="x y"}[$__rate_interval])))'
        " / on (job) group_left max without (state) (hub_b) > bool 3 and hub_c offset 5m"
    )
    assert metric_names(expr) == {"hub_a_bucket", "hub_b", "hub_c"}


def panels_of(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return found


def test_the_dashboard_is_importable_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    # The data source is chosen on import, not a uid from our Grafana.
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = panels_of(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    graphs = [panel for panel in panels if panel["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        assert panel["title"] and set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel["id"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert metric_names(target["expr"]), (panel["title"], target["expr"])


@pytest.mark.django_db
def test_every_metric_the_dashboard_queries_is_served(client, api):
    # Something of every kind has happened, so every labelled metric has a sample: a push stored,
    # the same pushed again, one refused, and what a worker records for an attempt.
    envelope = {"message": "order:new", "message_id": "grafana-1", "payload": {"order": {"number": "R1"}}}
    assert api.post("/events", envelope, format="json").status_code == 202
    assert api.post("/events", envelope, format="json").status_code == 200
    assert api.post("/events", {"message": "order:new", "payload": "x"}, format="json").status_code == 422
    attempt_observe("success", 0.2)
    attempt_observe("http_error", 0.1)
    delivery_outcome_count("delivered")

    response = client.get("/metrics")
    assert response.status_code == 200
    served = {
        sample.name for family in text_string_to_metric_families(response.content.decode()) for sample in family.samples
    }
    queried = {
        name: panel["title"]
        for panel in panels_of(json.loads(DASHBOARD.read_text()))
        for target in panel.get("targets", [])
        for name in metric_names(target["expr"])
    }
    missing = {name: title for name, title in queried.items() if name not in served}
    assert not missing, f"queried by the dashboard but not served at /metrics: {missing}"
    # Every metric the hub defines is on the dashboard.
    ours = {name for name in served if name.startswith("hub_") and not name.endswith("_created")}
    ours -= {"hub_delivery_attempt_seconds_count", "hub_delivery_attempt_seconds_sum"} - set(queried)
    assert ours <= set(queried), ours - set(queried)
