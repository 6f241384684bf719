"""conf/grafana-dashboard.json queries only metrics the hub exports, with their labels, and
has the four rows the README describes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from tether.observability import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "conf" / "grafana-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",)}


def exported() -> dict[str, set[str]]:
    """Every sample name /metrics can show, with the labels it carries."""
    names: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for suffix in SUFFIXES[metric._type]:  # noqa: SLF001
                extra = {"le"} if suffix == "_bucket" else set()
                names[metric._name + suffix] = set(metric._labelnames) | extra  # noqa: SLF001
    # The board's gauges are collected, not described: read them from an exposition.
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    names.update({"tether_in_flight": {"llm"}, "tether_queued": {"llm"},
                  "tether_llms": {"kind", "status"}})  # labelled, so empty without Llms
    return names


def test_every_query_names_an_exported_metric_and_its_labels():
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Traffic", "Latency", "Wakes", "Publishers"]
    known = exported()
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"]]
    assert len(queries) > 15
    for expr in queries:
        for name, selector in re.findall(r"(tether_[a-z_]+)(\{[^}]*\})?", expr):
            assert name in known, f"{name} (in {expr!r}) is not exported"
            for label in re.findall(r"([a-z_]+)\s*=~?", selector or ""):
                assert label in known[name], f"{name} has no label {label!r} ({expr!r})"
        for label in re.findall(r"by \(([^)]*)\)", expr):
            for each in label.split(","):
                assert any(each.strip() in labels for labels in known.values()), expr
