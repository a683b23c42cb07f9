"""Write an :class:`~seesr.evaluation.evaluate.EvaluationResult` as files.

``REPORT_DIR/``
    ``per_image.csv``   one row per prediction: file names, one column per metric, problems;
    ``summary.json``    means, counts, settings (crop, colour space), metric package versions, problems;
    ``summary.md``      the same as a Markdown table (plus the paper's row when one is given);
    ``per_image.png``   per-image scores, one panel per metric, the mean as a dashed line (matplotlib).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from seesr import __version__
from seesr.evaluation.evaluate import EvaluationResult
from seesr.evaluation.registry import METRICS
from seesr.utils.files import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["REPORT_FILES", "format_value", "write_report"]

REPORT_FILES = {"csv": "per_image.csv", "json": "summary.json", "markdown": "summary.md", "plot": "per_image.png"}

# Decimals used by the paper's Table 2.
_DECIMALS = {"psnr": 2, "fid": 2, "musiq": 2}


def format_value(name: str, value: float | None) -> str:
    """A score as the paper prints it (PSNR/FID/MUSIQ 2 decimals, the rest 4); ``-`` for None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{_DECIMALS.get(name, 4)}f}"


def _json_number(value: float | None) -> float | str | None:
    """JSON has no inf/nan: inf becomes the string "inf", nan becomes null."""
    if value is None or math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def _csv_text(result: EvaluationResult) -> str:
    names = [n for n in result.computed_metrics if n != "fid"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "prediction", "ground_truth", *names, "problems"])
    for record in result.records:
        row = [record.name, str(record.pred), str(record.gt) if record.gt else ""]
        for name in names:
            value = record.scores.get(name)
            row.append("" if value is None else ("inf" if math.isinf(value) else repr(float(value))))
        row.append("; ".join(record.problems))
        writer.writerow(row)
    return buffer.getvalue()


def summary_dict(result: EvaluationResult, paper: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The content of ``summary.json``."""
    metrics = {}
    for name, entry in result.summary().items():
        metrics[name] = {**entry, "mean": _json_number(entry["mean"])}
        if paper and name in paper:
            metrics[name]["paper"] = paper[name]
    return {
        "seesr_version": __version__,
        "mode": result.mode,
        "pred_dir": str(result.pred_dir),
        "gt_dir": str(result.gt_dir) if result.gt_dir else None,
        "images": len(result.records),
        "images_with_ground_truth": sum(1 for r in result.records if r.gt is not None),
        "metrics": metrics,
        "skipped_metrics": dict(result.skipped_metrics),
        "settings": dict(result.settings),
        "package_versions": dict(result.versions),
        "problems": result.all_problems,
    }


def _markdown(result: EvaluationResult, paper: Mapping[str, float] | None, title: str) -> str:
    lines = [f"# {title}", ""]
    lines.append(f"- predictions: `{result.pred_dir}` ({len(result.records)} images)")
    if result.gt_dir is not None:
        with_gt = sum(1 for r in result.records if r.gt is not None)
        lines.append(f"- ground truth: `{result.gt_dir}` ({with_gt} pairs)")
    else:
        lines.append("- ground truth: none (no-reference mode)")
    lines.append(f"- {result.settings.get('colour', '')}; crop border {result.settings.get('crop_border', 0)} px")
    versions = ", ".join(f"{k} {v}" for k, v in result.versions.items() if v)
    lines.append(f"- packages: {versions}")
    lines.append("")
    header = "| Metric | Mean | Images |" + (" Paper (SeeSR) |" if paper else "") + " Implementation |"
    lines.append(header)
    lines.append("|---|---:|---:|" + ("---:|" if paper else "") + "---|")
    for name, entry in result.summary().items():
        row = f"| {entry['label']} {METRICS[name].arrow} | {format_value(name, entry['mean'])} | {entry['count']} |"
        if paper:
            row += f" {format_value(name, paper.get(name))} |"
        lines.append(row + f" {entry['implementation']} |")
    for name, reason in result.skipped_metrics.items():
        lines.append(
            f"| {METRICS[name].label} {METRICS[name].arrow} | skipped | 0 |"
            + (" |" if paper else "")
            + f" {reason.splitlines()[0]} |"
        )
    problems = summary_dict(result)["problems"]
    if problems:
        lines += ["", f"## Problems ({len(problems)})", ""]
        lines += [f"- {problem}" for problem in problems]
    names = [n for n in result.computed_metrics if n != "fid"]
    if names and result.records:
        shown = result.records[:100]
        lines += [
            "",
            "## Per image"
            + (f" (first {len(shown)} of {len(result.records)})" if len(shown) < len(result.records) else ""),
            "",
        ]
        lines.append("| Image | " + " | ".join(METRICS[n].label for n in names) + " |")
        lines.append("|---|" + "---:|" * len(names))
        for record in shown:
            cells = [format_value(n, record.scores.get(n)) for n in names]
            lines.append(f"| {record.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(result: EvaluationResult, path: Path) -> Path | None:
    names = [n for n in result.computed_metrics if n != "fid" and any(n in r.scores for r in result.records)]
    if not names:
        return None
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: no plot (pip install 'seesr[eval]')")
        return None
    count = len(result.records)
    figure = Figure(figsize=(max(6.0, min(0.25 * count, 24.0)), 2.2 * len(names)), layout="constrained")
    axes = figure.subplots(len(names), 1, squeeze=False, sharex=True)[:, 0]
    positions = list(range(count))
    for axis, name in zip(axes, names, strict=True):
        values = [r.scores.get(name, math.nan) for r in result.records]
        finite = [v if math.isfinite(v) else math.nan for v in values]
        axis.bar(positions, finite, color="tab:blue")
        mean = result.summary()[name]["mean"]
        if mean is not None and math.isfinite(mean):
            axis.axhline(mean, color="tab:red", linestyle="--", linewidth=1, label=f"mean {format_value(name, mean)}")
            axis.legend(loc="lower right", fontsize="small")
        axis.set_ylabel(f"{METRICS[name].label} {METRICS[name].arrow}")
    if count <= 40:
        axes[-1].set_xticks(positions, [r.name for r in result.records], rotation=60, ha="right", fontsize="small")
    else:
        axes[-1].set_xlabel("image index (sorted by name)")
    figure.suptitle(f"{result.pred_dir.name}: per-image scores")
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    return path


def write_report(
    result: EvaluationResult,
    out_dir: str | Path,
    paper: Mapping[str, float] | None = None,
    title: str = "seesr eval",
) -> dict[str, Path]:
    """Write the four report files into ``out_dir`` (atomically); returns ``{kind: path}`` of those written.

    ``paper`` (metric name -> value) adds the paper's numbers beside ours in the Markdown and JSON.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "csv": write_text_atomic(_csv_text(result), out / REPORT_FILES["csv"]),
        "json": write_text_atomic(
            json.dumps(summary_dict(result, paper), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
            out / REPORT_FILES["json"],
        ),
        "markdown": write_text_atomic(_markdown(result, paper, title), out / REPORT_FILES["markdown"]),
    }
    plot = _plot(result, out / REPORT_FILES["plot"])
    if plot is not None:
        written["plot"] = plot
    return written
