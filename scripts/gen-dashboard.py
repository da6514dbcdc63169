#!/usr/bin/env python3
"""Writes helm/dnslens/dashboards/dnslens.json, the Grafana dashboard the chart ships.

The dashboard is generated so that every panel uses the same namespace filter and rate
window; edit this file and run it again (the test suite checks every metric name in the
JSON against a live /metrics scrape). Usage: scripts/gen-dashboard.py
"""
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "helm" / "dnslens" / "dashboards" / "dnslens.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
WINDOW = "[$__rate_interval]"


def sel(metric, labels=""):
    matchers = ['namespace=~"$namespace"'] + ([labels] if labels else [])
    return metric + "{" + ",".join(matchers) + "}"


def rate(metric, labels=""):
    return "rate(" + sel(metric, labels) + WINDOW + ")"


def increase(metric, labels=""):
    return "increase(" + sel(metric, labels) + WINDOW + ")"


class Layout:
    def __init__(self):
        self.panels, self.y = [], 0

    def add(self, title, kind, targets, x=0, w=12, h=8, unit="short", desc="", exemplar=False):
        targets = [
            {"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend,
             **({"exemplar": True} if exemplar else {}),
             **({"format": "heatmap"} if kind == "heatmap" else {})}
            for i, (expr, legend) in enumerate(targets)
        ]
        options = {"calculate": False, "yAxis": {"unit": "s"}, "color": {"scheme": "Oranges"}} if kind == "heatmap" else {}
        self.panels.append({
            "id": len(self.panels) + 1, "type": kind, "title": title, "description": desc, "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": x, "y": self.y}, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": options,
        })

    def next_row(self, h=8):
        self.y += h


def main():
    d = Layout()
    d.add("Lookups per second by outcome", "timeseries",
          [("sum by (outcome) (" + rate("dnslens_lookups_total") + ")", "{{outcome}}")], unit="reqps",
          desc="One lookup = all queries of one getaddrinfo (every search suffix, A and AAAA).")
    d.add("Queries per second by RCODE sent", "timeseries",
          [("sum by (rcode) (" + rate("dnslens_requests_total") + ")", "{{rcode}}")], x=12, unit="reqps")
    d.next_row()
    all_queries = "sum(" + rate("dnslens_requests_total") + ")"
    d.add("Search noise vs genuine failures", "timeseries", [
        ("sum(" + rate("dnslens_search_expansion_queries_total", 'outcome=~"nxdomain|nodata"') + ") / " + all_queries,
         "search noise (NXDOMAIN/NODATA of suffix attempts)"),
        ("sum(" + rate("dnslens_lookups_total", 'outcome="nxdomain"') + ") / sum(" + rate("dnslens_lookups_total") + ")",
         "genuine NXDOMAIN (lookups of names that do not exist)"),
        ("sum(" + rate("dnslens_requests_total", 'rcode="SERVFAIL"') + ") / " + all_queries, "SERVFAIL"),
    ], unit="percentunit", desc="The share of queries that are only search-list noise, apart from lookups that really failed.")
    d.add("Anomalies by kind (exemplars open the lookup's trace)", "timeseries",
          [("sum by (kind) (" + increase("dnslens_anomalies_total") + ")", "{{kind}}")], x=12, exemplar=True,
          desc="Each increment carries the lookup's trace id as an exemplar (label trace_id): set it as the "
               "Prometheus data source's exemplar trace-id destination to jump to Tempo or Jaeger.")
    d.next_row()
    d.add("Upstream timeouts and client retries", "timeseries", [
        ("sum by (upstream) (" + rate("dnslens_upstream_requests_total", 'outcome="timeout"') + ")", "timeout {{upstream}}"),
        ("sum by (qtype) (" + rate("dnslens_client_retries_total") + ")", "client retry {{qtype}}"),
    ], unit="reqps")
    d.add("Client retry gap (a band at 5 s: lost packets, the conntrack race)", "heatmap",
          [("sum by (le) (" + increase("dnslens_client_retry_gap_seconds_bucket") + ")", "{{le}}")], x=12,
          desc="Time between a question and the client's repeat of it; resolver timeouts of 1, 2 and 5 s show as bands.")
    d.next_row()
    d.add("Empty NOERROR by search expansion (the musl trap)", "timeseries",
          [("sum by (search_expansion, soa) (" + rate("dnslens_empty_noerror_total") + ")",
            "search_expansion={{search_expansion}} soa={{soa}}")], unit="reqps",
          desc="search_expansion=true: musl (Alpine) stops its search walk there and fails the lookup.")
    d.add("Parallel A/AAAA pairs and suspected races", "timeseries", [
        ("sum(" + rate("dnslens_parallel_queries_total") + ")", "pairs sent together"),
        ("sum(" + rate("dnslens_parallel_query_race_suspected_total") + ")", "race suspected"),
    ], x=12, unit="reqps")
    d.next_row()
    d.add("Upstream latency", "heatmap",
          [("sum by (le) (" + increase("dnslens_upstream_duration_seconds_bucket") + ")", "{{le}}")])
    hits, misses = "sum(" + rate("dnslens_cache_hits_total") + ")", "sum(" + rate("dnslens_cache_misses_total") + ")"
    d.add("Cache hit ratio", "timeseries", [
        (hits + " / (" + hits + " + " + misses + ")", "hit ratio"),
        ("sum(" + rate("dnslens_cache_stale_served_total") + ") / " + all_queries, "served stale"),
    ], x=12, unit="percentunit")
    d.next_row()
    d.add("Mitigations at work", "timeseries", [
        ("sum by (kind) (" + rate("dnslens_rewrites_total") + ")", "rewrite {{kind}}"),
        ("sum by (result) (" + rate("dnslens_autopath_total") + ")", "autopath {{result}}"),
        ("sum(" + rate("dnslens_cache_coalesced_total") + ")", "coalesced"),
    ], unit="reqps")
    d.add("Lookups that walked the whole search list (lower ndots)", "timeseries", [
        ("sum(" + rate("dnslens_ndots_hints_total") + ")", "ndots hints"),
        ("sum(" + rate("dnslens_lookups_total") + ")", "all lookups"),
    ], x=12, unit="reqps", desc="The names: dnslens anomalies --hints.")
    d.next_row()
    d.add("Upstreams in service", "stat",
          [("sum by (upstream) (" + sel("dnslens_upstream_healthy") + ")", "{{upstream}}")], w=8, h=5)
    d.add("Queries waiting on an upstream", "stat",
          [("sum(" + sel("dnslens_inflight_queries") + ")", "in flight")], x=8, w=8, h=5)
    d.add("Messages dropped unanswered", "stat",
          [("sum(" + rate("dnslens_requests_dropped_total") + ") + sum(" + rate("dnslens_responses_dropped_total") + ")",
            "dropped/s")], x=16, w=8, h=5, unit="reqps")
    dashboard = {
        "uid": "dnslens", "title": "dnslens: DNS as pods see it", "tags": ["dns", "dnslens", "kubernetes"],
        "timezone": "browser", "schemaVersion": 39, "version": 1, "refresh": "30s", "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "namespace", "type": "query", "datasource": DS, "label": "Namespace",
             "query": {"query": "label_values(dnslens_requests_total, namespace)", "refId": "namespace"},
             "definition": "label_values(dnslens_requests_total, namespace)", "includeAll": True, "multi": True,
             "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "refresh": 2},
        ]},
        "annotations": {"list": []},
        "panels": d.panels,
    }
    OUT.write_text(json.dumps(dashboard, indent=2) + "\n")
    print(f"{OUT}: {len(d.panels)} panels")


if __name__ == "__main__":
    main()
