"""The benchmark harness's pure parts: system specs, load plans, the README's table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from audiotext.benchmarks import bench, report, systems
from audiotext.benchmarks.systems import Point, SystemSpec
from audiotext.benchmarks.workloads import WORKLOADS, make_items

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def test_a_system_spec_carries_typed_audiotext_overrides() -> None:
    spec = SystemSpec.parse("audiotext:max_num_seqs=16,enforce_eager=true,dtype=bfloat16")
    assert spec.kind == "audiotext"
    assert spec.overrides == {"max_num_seqs": 16, "enforce_eager": True, "dtype": "bfloat16"}


@pytest.mark.parametrize("text", ["nope", "vllm:max_num_seqs=4", "audiotext:no_such=1"])
def test_bad_system_specs_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        SystemSpec.parse(text)


def test_every_point_gets_new_audio_and_every_system_the_same() -> None:
    parser = argparse.ArgumentParser()
    bench.add_cli_args(parser)
    args = parser.parse_args(["--requests", "20"])
    first = bench.items_for("short", Point("closed", 2), args)
    again = bench.items_for("short", Point("closed", 2), args)
    other = bench.items_for("short", Point("closed", 16), args)
    assert len(first) == 8 and len(other) == 20  # 3 per client, at least 8, at most 20
    assert all((a.samples == b.samples).all() for a, b in zip(first, again, strict=True))
    assert not any(
        len(a.samples) == len(b.samples) and (a.samples == b.samples).all()
        for a in first
        for b in other
    )


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workload_clip_lengths_stay_in_their_ranges(name: str) -> None:
    items = make_items(WORKLOADS[name], 6, output_tokens=5, seed=1)
    low = min(r[0] for r in WORKLOADS[name].ranges)
    high = max(r[1] for r in WORKLOADS[name].ranges)
    assert all(low <= item.audio_seconds <= high for item in items)
    assert {item.max_tokens for item in items} == {5}
    assert len({item.text for item in items}) > 1


@pytest.mark.parametrize("name", ["default", "defaults", "tuning", "lengths-512-c64-bf16"])
def test_the_readme_tables_are_generated_from_the_committed_results(name: str) -> None:
    result = json.loads((RESULTS / f"{name}.json").read_text())
    assert result["name"] == name
    assert report.readme_table(ROOT / "README.md", name) == report.table(result)
    assert (RESULTS / f"{name}.png").exists()


def test_the_task_endpoint_gets_its_chat_twins_clips_negated() -> None:
    parser = argparse.ArgumentParser()
    bench.add_cli_args(parser)
    args = parser.parse_args([])
    chat = bench.items_for("short", Point("closed", 1), args)
    task = bench.items_for("short", Point("closed", 1, "task"), args)
    assert [t.text for t in task] == [c.text for c in chat]
    assert all((t.samples == -c.samples).all() for t, c in zip(task, chat, strict=True))


def test_engine_steps_come_from_the_cumulative_histogram_between_two_scrapes() -> None:
    before = {"steps_le_16": 2.0, "steps_le_64": 3.0, "steps_le_4096": 3.0, "steps_le_inf": 3.0}
    after = {"steps_le_16": 12.0, "steps_le_64": 13.0, "steps_le_4096": 15.0, "steps_le_inf": 16.0}
    engine = systems.engine_means(before, after)
    assert report.step_counts(engine) == [(0, 16, 10), (64, 4096, 2), (4096, float("inf"), 1)]
    assert report._bucket(16, 64) == "17-64" and report._bucket(4096, float("inf")) == "over 4096"
