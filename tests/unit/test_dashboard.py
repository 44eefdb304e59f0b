"""The Grafana dashboard in deploy/: every query names a series that exists, and every
audiotext series has a panel."""

from __future__ import annotations

import json
import re
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram

from audiotext.server import metrics

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "audiotext-dashboard.json"
SERIES = re.compile(r"\b((?:audiotext_|vllm:)[A-Za-z0-9_:]+)")
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def queried_series() -> set[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    return {name for expr in exprs for name in SERIES.findall(expr)}


def base_name(sample: str) -> str:
    for suffix in SUFFIXES:
        if sample.endswith(suffix):
            return sample.removesuffix(suffix)
    return sample


def audiotext_series() -> dict[str, Counter | Histogram]:
    return {m._name: m for m in vars(metrics).values() if isinstance(m, Counter | Histogram)}


def test_panels_have_unique_ids_and_queries() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    graphs = [p for p in panels if p["type"] != "row"]
    assert graphs
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in graphs)


def test_every_audiotext_query_names_an_exported_sample() -> None:
    series = audiotext_series()
    for name in (n for n in queried_series() if n.startswith("audiotext_")):
        metric = series.get(base_name(name))
        assert metric is not None, f"{name}: no such audiotext series"
        if isinstance(metric, Counter):
            assert name == metric._name + "_total", name
        else:
            assert name.removeprefix(metric._name) in ("_bucket", "_sum", "_count"), name


def test_every_audiotext_series_has_a_panel() -> None:
    shown = {base_name(n) for n in queried_series()}
    assert set(audiotext_series()) <= shown


def test_every_vllm_query_names_a_series_vllm_declares() -> None:
    spec = find_spec("vllm")
    assert spec is not None and spec.origin is not None
    source = (Path(spec.origin).parent / "v1" / "metrics" / "loggers.py").read_text()
    for name in (n for n in queried_series() if n.startswith("vllm:")):
        assert f'"{base_name(name)}"' in source, f"{name}: vLLM declares no such series"
