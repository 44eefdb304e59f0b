"""Tables, headline ratios and plots from a benchmark result (`bench`'s JSON).

    python -m audiotext.benchmarks.report benchmarks/results/default.json [--readme README.md]

With `--readme`, the block between the README's `<!-- bench:<name> -->` markers (the
result's name) is rewritten from the result file, so its numbers are never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from audiotext.benchmarks import flops


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def saturation(system: dict[str, Any], workload: str) -> dict[str, Any] | None:
    """The system's chat point with the highest request throughput on `workload`."""
    points = [
        p
        for p in system["points"]
        if p["workload"] == workload and p["endpoint"] == "chat" and p["summary"]["errors"] == 0
    ]
    return max(points, key=lambda p: p["summary"]["requests_per_s"], default=None)


def point(system: dict[str, Any], workload: str, label: str) -> dict[str, Any] | None:
    return next(
        (p for p in system["points"] if p["workload"] == workload and p["label"] == label), None
    )


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """Saturation throughput per system and workload, and audiotext's ratios to the others."""
    systems = {s["name"]: s for s in result["systems"]}
    throughput: dict[str, dict[str, float]] = {}
    for name, system in systems.items():
        for workload in result["workloads"]:
            best = saturation(system, workload)
            if best is not None:
                throughput.setdefault(workload, {})[name] = best["summary"]["requests_per_s"]
    out: dict[str, Any] = {"requests_per_s": throughput, "audiotext_over": {}}
    for workload, by_system in throughput.items():
        ours = by_system.get("audiotext")
        if ours:
            out["audiotext_over"][workload] = {
                name: ours / value for name, value in by_system.items() if name != "audiotext"
            }
    if "audiotext" in systems:
        task_over_chat = {}
        for workload in result["workloads"]:
            chat = point(systems["audiotext"], workload, "c=1")
            task = point(systems["audiotext"], workload, "c=1 task")
            if chat and task and chat["summary"]["e2e_s"]["p50"]:
                task_over_chat[workload] = (
                    task["summary"]["e2e_s"]["p50"] / chat["summary"]["e2e_s"]["p50"]
                )
        out["task_p50_over_chat_p50"] = task_over_chat
    return out


def system_line(system: dict[str, Any]) -> str:
    if "error" in system:
        return f"{system['name']}: failed: {system['error']}"
    parts = []
    for p in system["points"]:
        s = p["summary"]
        parts.append(f"{p['workload']} {p['label']}: {s['requests_per_s']:.2f} req/s")
    ready = f" (ready in {system['started_in_s']:.0f} s)" if system.get("started_in_s") else ""
    return f"{system['name']}{ready}: " + "; ".join(parts)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per system and workload at its saturation point, then the ratios."""
    head = headline(result)
    limit = result.get("limit")  # results from before the FLOP count have none
    lines = [
        "| system | workload | req/s (saturation) | at | output tok/s | audio s/s "
        "| p50 latency ms | p50 TTFT ms | audiotext is |" + (" MFU |" if limit else ""),
        "|---|---|---:|---|---:|---:|---:|---:|---:|" + ("---:|" if limit else ""),
    ]
    for workload in result["workloads"]:
        for system in result["systems"]:
            best = saturation(system, workload)
            if best is None:
                continue
            s = best["summary"]
            ratio = head["audiotext_over"].get(workload, {}).get(system["name"])
            line = (
                f"| {system['name']} | {workload} | {s['requests_per_s']:.2f} | {best['label']} "
                f"| {s['output_tokens_per_s']:.1f} | {s['audio_seconds_per_s']:.1f} "
                f"| {_ms(s['e2e_s']['p50'])} | {_ms(s['ttft_s']['p50'])} "
                f"| {'-' if ratio is None else f'{ratio:.1f}x'} |"
            )
            if limit:
                line += f" {_percent(utilisation(result, system, best))} |"
            lines.append(line)
    lines += time_table(result)
    for workload, ratio in head.get("task_p50_over_chat_p50", {}).items():
        lines.append("")
        lines.append(
            f"Task endpoint p50 latency / chat endpoint p50 latency, {workload}, c=1: {ratio:.3f}"
        )
    machine = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v)
    if limit:
        peaks = ", ".join(f"{v / 1e9:.0f} GFLOP/s {k}" for k, v in limit["peak_flops"].items())
        lines += [
            "",
            f"MFU: model FLOPs per second at saturation (encoder over the real audio, "
            f"projector, language model over prompt and answer) over this machine's "
            f"matrix-multiply peak in the same dtype, measured in the same run: {peaks} "
            f"(2048-square matmul, {machine['cores']} cores).",
        ]
    lines += [
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"no GPU. {versions}. Checkpoint `{result['config']['size']}`, "
        f"{dtypes(result)}, {result['config']['output_tokens']} "
        f"output tokens per request. Command: `{result['command'] or 'audiotext bench'}`.",
    ]
    return "\n".join(lines)


def dtype_of(result: dict[str, Any], system: dict[str, Any]) -> str:
    """The dtype a system computed in (results from before per-system dtypes: the run's)."""
    return str(system.get("dtype") or result["config"]["dtype"])


def utilisation(
    result: dict[str, Any], system: dict[str, Any], point: dict[str, Any]
) -> float | None:
    """Model FLOP utilisation of a point: its FLOPs per second over its dtype's peak."""
    limit = result["limit"]
    rate = flops.point_flops_per_s(flops.Shape(**limit["shape"]), point)
    peak = limit["peak_flops"].get(dtype_of(result, system))
    return None if rate is None or not peak else rate / peak


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def dtypes(result: dict[str, Any]) -> str:
    """`float32 for every system`, or each system's own dtype where they differ."""
    each = {s["name"]: dtype_of(result, s) for s in result["systems"]}
    if len(set(each.values())) <= 1:
        return f"{next(iter(each.values()), result['config']['dtype'])} for every system"
    return (
        "each system in its default dtype ("
        + ", ".join(f"{name} {dtype}" for name, dtype in each.items())
        + ")"
    )


def time_table(result: dict[str, Any]) -> list[str]:
    """Where a request's latency goes on the vLLM servers: the engine's own phase timings
    (`/metrics`) against the client's end-to-end mean; the rest is the frontend (HTTP,
    JSON, base64, audio decoding, features, tokenising) and transport."""
    workload = next(iter(result["workloads"]))
    rows = []
    for system in result["systems"]:
        best = saturation(system, workload)
        for p in [point(system, workload, "c=1"), best]:
            if p is None or not p.get("engine") or p["summary"]["e2e_s"]["mean"] is None:
                continue
            e2e, engine = p["summary"]["e2e_s"]["mean"], p["engine"]
            phases = [engine.get(k, 0.0) for k in ("queue_s", "prefill_s", "decode_s")]
            rows.append(
                f"| {system['name']} | {p['label']} | {_ms(e2e)} | {_ms(e2e - sum(phases))} "
                f"| {' | '.join(_ms(v) for v in phases)} |"
            )
            if p is best:
                break
    if not rows:
        return []
    return [
        "",
        f"Where the time goes, {workload} clips (mean ms per request; frontend = client "
        "latency minus the engine's queue, prefill and decode):",
        "",
        "| system | at | client latency | frontend + transport | queue | prefill | decode |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
        *step_lines(result, workload),
    ]


def step_lines(result: dict[str, Any], workload: str) -> list[str]:
    """Engine steps by tokens per step at each system's saturation (vLLM's histogram)."""
    lines = []
    for system in result["systems"]:
        best = saturation(system, workload)
        if best is None or not best.get("engine"):
            continue
        steps = step_counts(best["engine"])
        if steps:
            cells = ", ".join(f"{_bucket(lo, hi)}: {n}" for lo, hi, n in steps)
            lines.append(f"- {system['name']} at {best['label']}: {cells}")
    if not lines:
        return []
    return ["", "Engine steps by tokens per step, at saturation (tokens: steps):", "", *lines]


def step_counts(engine: dict[str, float]) -> list[tuple[float, float, int]]:
    """(above, at most, steps) per non-empty bucket of the tokens-per-step histogram."""
    bounds = sorted(float(k.removeprefix("steps_le_")) for k in engine if k.startswith("steps_le_"))
    rows, below, previous = [], 0.0, 0.0
    for bound in bounds:
        cumulative = engine[f"steps_le_{bound:g}"]
        if cumulative > previous:
            rows.append((below, bound, int(cumulative - previous)))
        below, previous = bound, cumulative
    return rows


def _bucket(above: float, at_most: float) -> str:
    return f"over {above:g}" if at_most == float("inf") else f"{above + 1:g}-{at_most:g}"


def plot(result: dict[str, Any], path: Path) -> None:
    """Latency against throughput per system and workload, and TTFT at saturation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(result["workloads"])
    fig, axes = plt.subplots(1, len(workloads) + 1, figsize=(5.5 * (len(workloads) + 1), 4.5))
    for ax, workload in zip(axes, workloads, strict=False):
        for system in result["systems"]:
            points = [
                p
                for p in system["points"]
                if p["workload"] == workload and p["endpoint"] == "chat" and p["mode"] != "open"
            ]
            points.sort(key=lambda p: p["summary"]["requests_per_s"])
            xs = [p["summary"]["requests_per_s"] for p in points]
            ys = [p["summary"]["e2e_s"]["p50"] for p in points]
            if any(y is None for y in ys):  # offline: throughput only
                for x in xs:
                    ax.axvline(x, linestyle="--", color="grey", label=f"{system['name']} (req/s)")
                continue
            ax.plot(xs, ys, marker="o", label=system["name"])
        ax.set(title=f"{workload} clips", xlabel="requests/s", ylabel="p50 latency (s)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ttft_ax = axes[-1]
    data, names = [], []
    for system in result["systems"]:
        best = saturation(system, workloads[0])
        values = [r["ttft_s"] for r in best["records"] if r["ttft_s"] is not None] if best else []
        if values:
            data.append(values)
            names.append(f"{system['name']}\n{best['label']}")  # type: ignore[index]
    if data:
        ttft_ax.boxplot(data, tick_labels=names)
        ttft_ax.set_yscale("log")
    ttft_ax.set(title=f"TTFT at saturation, {workloads[0]} clips", ylabel="seconds")
    ttft_ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(
        f"audiotext bench: checkpoint {result['config']['size']}, {result['config']['dtype']}, "
        f"{result['machine']['cores']} CPU cores"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def update_readme(readme: Path, result: dict[str, Any]) -> None:
    """Rewrite the README block named after the result with its table."""
    begin, end = markers(result["name"])
    text = readme.read_text()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no {begin} ... {end} block")
    readme.write_text(pattern.sub(lambda _: f"{begin}\n{table(result)}\n{end}", text))


def readme_table(readme: Path, name: str) -> str:
    """The table in the README block `name` (empty when there is none)."""
    begin, end = markers(name)
    match = re.search(
        re.escape(begin) + "\n(.*?)\n" + re.escape(end), readme.read_text(), re.DOTALL
    )
    return match.group(1) if match else ""


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("result", type=Path, help="a bench JSON file")
    parser.add_argument("--readme", type=Path, help="rewrite this README's bench table")
    parser.add_argument("--plot", type=Path, help="also draw the figure here")


def main(args: argparse.Namespace) -> None:
    result = json.loads(args.result.read_text())
    if args.readme:
        update_readme(args.readme, result)
    if args.plot:
        plot(result, args.plot)
    print(table(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_cli_args(parser)
    main(parser.parse_args())
