"""The monitoring component's PromQL, checked by Prometheus' own promtool: every alert, dashboard query and
autoscaler rule parses, and each alert fires on the series it is meant for (and not on healthy ones).

Skips, with the reason, where promtool (Debian package ``prometheus``) or kubectl is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from deploy_support import (
    adapter_rules,
    dashboard,
    kubectl_problem,
    promtool,
    promtool_problem,
    rule_groups,
    skip_without,
)

tools_present = skip_without(kubectl_problem, promtool_problem)


def test_alert_rules_pass_promtool_check(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    result = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout, result.stdout


def test_dashboard_and_adapter_queries_parse(tmp_path: Path) -> None:
    """Grafana's variables replaced by what Grafana would put there; each query as a recording rule."""
    substitutions = {"$__rate_interval": "5m", "$namespace": ".*", "$model": ".*"}
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in substitutions.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"panel {panel['title']!r} uses an unknown variable: {expr}"
            queries.append(expr)
    for rule in adapter_rules():
        queries.append(rule["seriesQuery"])
        queries.append(
            rule["metricsQuery"]
            .replace("<<.Series>>", rule["name"]["as"])
            .replace("<<.LabelMatchers>>", 'namespace="resnet-serve",pod=~"resnet-serve-.*"')
            .replace("<<.GroupBy>>", "pod")
        )
    rules = [{"record": f"dashboard:query_{n}", "expr": query} for n, query in enumerate(queries)]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    result = promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


SERIES = 'namespace="resnet-serve"'


#: (evaluation time, alert, severity, labels, summary as its template renders it) on the series below.
EXPECTED_ALERTS = [
    (
        "25m",
        "ResnetServeNotReady",
        "warning",
        {"pod": "bad"},
        "resnet-serve pod bad has not been ready for 20 minutes",
    ),
    (
        "10m",
        "ResnetServeGPUFallback",
        "critical",
        {"pod": "bad", "model": "m"},
        "resnet-serve pod bad serves m without the GPU provider it asked for",
    ),
    (
        "20m",
        "ResnetServeHighRejectionRate",
        "warning",
        {"model": "busy"},
        "resnet-serve refuses 10% of busy requests (overload)",
    ),
    (
        "20m",
        "ResnetServeHighDisconnectRate",
        "warning",
        {"model": "impatient"},
        "clients hang up on 10% of impatient images before they run",
    ),
    (
        "20m",
        "ResnetServeHighP99Latency",
        "warning",
        {"model": "slow"},
        "resnet-serve p99 latency for slow is 1.99s",
    ),
]


def series(metric: str, values: str, **labels: str) -> dict[str, str]:
    """One promtool input series in the resnet-serve namespace."""
    selector = ", ".join([SERIES, *(f'{key}="{value}"' for key, value in labels.items())])
    return {"series": f"{metric}{{{selector}}}", "values": values}


def _unit_tests() -> dict[str, Any]:
    """promtool unit tests: one bad pod/model that must alert next to a healthy one that must not."""
    descriptions = {
        rule["alert"]: rule["annotations"]["description"]
        for group in rule_groups()
        for rule in group["rules"]
    }
    cpu_only, gpu = "CPUExecutionProvider", "CUDAExecutionProvider,CPUExecutionProvider"
    buckets = []
    # Model "slow": every request takes 1-2 s; model "fast": 5-10 ms. 10 requests/s each.
    for le in ("0.005", "0.01", "0.5", "1.0", "2.0", "+Inf"):
        slow = 0 if float(le) < 2.0 else 600
        fast = 0 if float(le) < 0.01 else 600
        buckets += [
            series("resnet_serve_request_seconds_bucket", f"0+{slow}x30", pod="a", model="slow", le=le),
            series("resnet_serve_request_seconds_bucket", f"0+{fast}x30", pod="a", model="fast", le=le),
        ]
    return {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series("resnet_serve_ready", "1x40", pod="ok", model="m"),
                    series("resnet_serve_ready", "0x40", pod="bad", model="m"),
                    series(
                        "resnet_serve_provider_info",
                        "1x40",
                        pod="bad",
                        model="m",
                        requested="auto",
                        active=cpu_only,
                        gpu_fallback="true",
                    ),
                    series(
                        "resnet_serve_provider_info",
                        "1x40",
                        pod="ok",
                        model="m",
                        requested="auto",
                        active=gpu,
                        gpu_fallback="false",
                    ),
                    # Model "busy": 600 requests/min, 60 of them refused queue_full (10 %).
                    series("resnet_serve_requests_total", "0+540x40", pod="a", model="busy", status="200"),
                    series("resnet_serve_requests_total", "0+60x40", pod="a", model="busy", status="503"),
                    series(
                        "resnet_serve_rejections_total", "0+60x40", pod="a", model="busy", reason="queue_full"
                    ),
                    # Model "garbage": as many refusals, but client errors (415): not the service's overload.
                    series("resnet_serve_requests_total", "0+300x40", pod="a", model="garbage", status="415"),
                    series("resnet_serve_requests_total", "0+300x40", pod="a", model="garbage", status="200"),
                    series(
                        "resnet_serve_rejections_total",
                        "0+300x40",
                        pod="a",
                        model="garbage",
                        reason="unsupported_image",
                    ),
                    # Model "impatient": 540 images/min run, 60 dropped because their client hung up (10 %).
                    series("resnet_serve_images_total", "0+540x40", pod="a", model="impatient"),
                    series("resnet_serve_images_dropped_total", "0+60x40", pod="a", model="impatient",
                           reason="disconnect"),
                    # Model "punctual": as many drops, but at their own deadline (the client said so): no alert.
                    series("resnet_serve_images_total", "0+540x40", pod="a", model="punctual"),
                    series("resnet_serve_images_dropped_total", "0+60x40", pod="a", model="punctual",
                           reason="deadline"),
                    *buckets,
                ],
                "alert_rule_test": [
                    {"eval_time": "19m", "alertname": "ResnetServeNotReady", "exp_alerts": []},
                    *(
                        {
                            "eval_time": at,
                            "alertname": alert,
                            "exp_alerts": [
                                {
                                    "exp_labels": {
                                        "severity": severity,
                                        "namespace": "resnet-serve",
                                        **labels,
                                    },
                                    "exp_annotations": {
                                        "summary": summary,
                                        "description": descriptions[alert],
                                    },
                                }
                            ],
                        }
                        for at, alert, severity, labels, summary in EXPECTED_ALERTS
                    ),
                ],
            }
        ],
    }


def test_each_alert_fires_on_its_failure_and_not_on_healthy_series(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(_unit_tests()))
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
