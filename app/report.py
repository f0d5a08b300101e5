"""The demo's HTML report: dataset samples, loss curve, predicted vs true layer stacks, and the metrics table.

The table is rendered from the metrics JSON and the same JSON is embedded verbatim in the page
(``<script id="metrics-json">``), so a reader — or a test — can check that every number shown is the number
measured.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.atomic import write_text_atomic

# Columns of the metrics table, in order: (key in a summary row, header, description).
METRIC_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("amodal_miou", "amodal mIoU", "Hungarian-matched amodal mask IoU, unmatched objects count 0"),
    ("amodal_miou_strict", "mIoU strict", "the same, extra and duplicate predicted layers counting IoU 0"),
    ("amodal_miou_occluded", "mIoU occluded", "amodal mIoU over objects hidden in part"),
    ("amodal_miou_occluded_min_area_0", "mIoU occluded, no area rule",
     "the same with no small-object rule: every true object and every non-empty predicted layer counts"),
    ("amodal_miou_unoccluded", "mIoU unoccluded", "the same over fully visible objects"),
    ("hidden_recall", "hidden recall", "occluded objects: fraction of their hidden pixels the layer covers"),
    ("hidden_precision", "hidden precision",
     "occluded objects: fraction of the layer's pixels outside the visible mask that are truly hidden"),
    ("fg_ari", "FG-ARI", "adjusted Rand index of the modal segmentation over true object pixels"),
    ("layer_psnr", "layer PSNR", "matched layers inside their amodal masks (dB)"),
    ("layer_ssim", "layer SSIM", "matched layers inside their amodal masks"),
    ("recomposition_psnr", "recomp. PSNR", "layers composited over the background vs the photo (dB)"),
    ("order_accuracy", "order acc.", "pairwise front/back accuracy over matched overlapping pairs"),
    ("count_accuracy", "count acc.", "fraction of scenes whose object count is right"),
    ("small_objects_ignored", "ignored objects",
     "true objects at or under the small-object rule: left out of every metric, for every method"),
)


def format_value(value: Any) -> str:
    """How a metric appears in the report (the test compares against this)."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def format_cell(summary: dict[str, Any], key: str) -> str:
    """A table cell: the value and, when the summary has one, its 95 % interval ``key_ci``."""
    text = format_value(summary.get(key))
    ci = summary.get(key + "_ci")
    if ci is not None and summary.get(key) is not None:
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return text


def metrics_table(rows: Sequence[tuple[Any, ...]]) -> str:
    """An HTML table with one row per ``(method name, summary dict[, label shown])``."""
    head = "".join(
        f'<th title="{html.escape(desc)}">{html.escape(name)}</th>' for _, name, desc in METRIC_COLUMNS
    )
    body = []
    for method, summary, *label in rows:
        cells = "".join(
            f'<td data-key="{key}">{format_cell(summary, key)}</td>' for key, _, _ in METRIC_COLUMNS
        )
        shown = html.escape(label[0] if label else method)
        body.append(f'<tr data-method="{html.escape(method)}"><th>{shown}</th>{cells}</tr>')
    return f"<table class=metrics><tr><th>method</th>{head}</tr>{''.join(body)}</table>"


def write_report(
    out_html: Path,
    *,
    title: str,
    summary_lines: Sequence[str],
    tables: Sequence[tuple[str, Sequence[tuple[Any, ...]]]],
    figures: Sequence[tuple[str, str]],
    metrics_json: dict[str, Any],
) -> None:
    """Write a self-contained page; ``figures`` are (caption, image path relative to the page)."""
    parts = [
        "<!doctype html><html><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table.metrics{border-collapse:collapse;margin:1em 0}"
        "table.metrics td,table.metrics th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "figure{margin:1.5em 0}img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}"
        "figcaption{color:#444;margin-top:.3em}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><ul>",
        *(f"<li>{html.escape(line)}</li>" for line in summary_lines),
        "</ul>",
    ]
    for caption, rows in tables:
        parts.append(f"<h2>{html.escape(caption)}</h2>{metrics_table(rows)}")
    for caption, src in figures:
        parts.append(
            f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    embedded = json.dumps(metrics_json, sort_keys=True).replace("</", "<\\/")
    parts.append(f'<script type="application/json" id="metrics-json">{embedded}</script></body></html>')
    write_text_atomic(out_html, "\n".join(parts))
