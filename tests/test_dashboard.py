"""The Compose stack's Prometheus and Grafana, and the dashboard's queries."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .test_compose import rendered
from .test_metrics import SERIES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose"
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "meshkit.json"


def expressions() -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in board["panels"] for t in panel["targets"]]


def concrete(expr: str) -> str:
    """A dashboard expression with Grafana's variables filled in."""
    return expr.replace("$__rate_interval", "1m").replace("$pipeline", ".*")


def series_of(expr: str) -> set[str]:
    """The meshkit series an expression reads (histogram suffixes removed)."""
    names = set(re.findall(r"\bmeshkit_[a-z_]+", expr))
    return {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in names}


class TestStack:
    """Prometheus in compose/docker-compose.yaml scrapes the gateway."""

    def test_prometheus_scrapes_the_gateway(self) -> None:
        config = rendered()
        assert {"prometheus", "grafana"} <= set(config["services"])
        scrape = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
        (job,) = scrape["scrape_configs"]
        assert job["metrics_path"] == "/metrics"
        assert job["static_configs"][0]["targets"] == ["gateway:8008"]
        mounts = config["services"]["prometheus"]["volumes"]
        assert any("/etc/prometheus/prometheus.yml" in str(m) for m in mounts)

    def test_promtool_accepts_the_configuration(self) -> None:
        promtool = shutil.which("promtool")
        assert promtool, "promtool is missing: `make test-deps` installs Debian's prometheus"
        done = subprocess.run(
            [promtool, "check", "config", "--syntax-only", str(COMPOSE / "prometheus.yml")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr


class TestDashboard:
    """compose/grafana/dashboards/meshkit.json."""

    def test_panels_cover_the_issue_and_read_only_real_series(self) -> None:
        board: dict[str, Any] = json.loads(DASHBOARD.read_text())
        titles = " | ".join(p["title"] for p in board["panels"]).lower()
        for topic in (
            "requests per second",
            "error",
            "first token",
            "per output token",
            "tokens per second",
            "in flight",
            "per node",
            "replicas up",
        ):
            assert topic in titles, topic
        read = set().union(*(series_of(e) for e in expressions()))
        assert read <= set(SERIES), read - set(SERIES)
        assert read == set(SERIES)  # and every series has a panel
