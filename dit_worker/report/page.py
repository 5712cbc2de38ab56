"""The report's HTML: one self-contained page (inline CSS and SVG, no script, no server), thumbnails
by relative links, so the folder opens the same from a local disk or an S3 prefix.

Every metric is shown as metrics.json holds it (Python's shortest round-trip repr of the float, the
same digits JSON stores), never rounded: the number on the page is the number in the record.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import numpy as np

from dit_worker.report.contents import ReportContents
from dit_worker.report.sections import duplicates_section, scores_section
from dit_worker.report.text import MAX_TEXT, esc, user_text, visible

# metrics.json keys shown in the table, in this order, with what each means.
METRICS = {
    "fid": "FID: Fréchet distance of Inception-v3 pool_3 features (torch-fidelity's TF-faithful network, "
    "ADM protocol). Lower is better.",
    "sfid": "sFID: the same on mixed_6/conv spatial features (Nash et al. 2021). Lower is better.",
    "inception_score_mean": "Inception Score, mean over 10 splits. Higher is better.",
    "inception_score_std": "Inception Score, standard deviation over the splits.",
    "precision": "Precision: share of samples inside the reference's 3-NN manifold (Kynkäänniemi et al. 2019).",
    "recall": "Recall: share of reference images inside the samples' 3-NN manifold.",
    "fd_dinov2": "FD-DINOv2: Fréchet distance of DINOv2 ViT-L/14 CLS features (Stein et al. 2023, dgm-eval). "
    "Lower is better.",
    "cmmd": "CMMD: MMD² of CLIP ViT-L/14-336 embeddings, Gaussian kernel σ=10, ×1000, unbiased "
    "(Jayasumana et al. 2024). Lower is better.",
    "clip_score": "CLIP score: mean over images of 100·max(cos(image, prompt), 0) (torchmetrics' definition). "
    "Higher is better.",
    "clip_score_std": "CLIP score: standard deviation over images.",
}
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
td.value{font-family:ui-monospace,monospace;white-space:nowrap}code,pre{font-family:ui-monospace,monospace;font-size:12px}
pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;word-break:break-all}
.group{margin:10px 0}.group h3{font-size:13px;margin:4px 0;font-weight:600}
.row{display:flex;flex-wrap:wrap;gap:4px}.row figure{margin:0;text-align:center;font-size:11px;color:#666}
.row img{width:128px;height:128px;object-fit:contain;image-rendering:pixelated;background:#eee;display:block}
svg text{font-size:10px;fill:#444}
h1,h3,code,bdi{overflow-wrap:anywhere}h4{font-size:12px;margin:6px 0 2px;font-weight:600}
.extremes figure,.dup-group figure{width:128px;overflow-wrap:anywhere}table.labels td{border:0;padding:1px 6px}
"""


def number(value: Any) -> str:
    """A metric as metrics.json holds it: repr of a float is its shortest round-trip form."""
    if isinstance(value, float):
        return repr(value)
    return esc(value)


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = []
    for key, meaning in METRICS.items():
        if key in metrics and metrics[key] is not None:
            rows.append(
                f'<tr><th>{esc(key)}</th><td class="value" data-metric="{esc(key)}">{number(metrics[key])}</td>'
                f"<td>{esc(meaning)}</td></tr>"
            )
    extra = {k: metrics[k] for k in ("num_samples", "image_size", "image_formats", "reference") if k in metrics}
    table = "<table><tr><th>metric</th><th>value</th><th>what it means</th></tr>" + "".join(rows) + "</table>"
    protocol = {k: metrics[k] for k in ("inception_weights", "protocol", "set_metrics_protocol") if k in metrics}
    details = esc(json.dumps(extra | protocol, indent=1))
    return (
        table
        + f"<p>Command: <code id='fid-command'>{user_text(metrics.get('command') or 'not recorded', None)}</code></p>"
        + f"<details><summary>inputs and protocol</summary><pre>{details}</pre></details>"
    )


def _timing(contents: ReportContents) -> str:
    commits = contents.commits
    if not commits:
        return "<p>No committed shard.</p>"
    created = (contents.job or {}).get("created_at")
    start = datetime.fromisoformat(created).timestamp() if created else commits[0].time
    start = min(start, commits[0].time)
    end = commits[-1].time
    span = max(end - start, 1e-9)
    bins = min(40, max(1, len(commits)))
    width = span / bins
    done = np.zeros(bins)
    for c in commits:
        done[min(bins - 1, int((c.time - start) / width))] += c.samples
    rates = done / width
    w, h, bar = 640, 140, 640 / bins
    top = max(float(rates.max()), 1e-9)
    bars = "".join(
        f'<rect x="{i * bar:.1f}" y="{h - r / top * (h - 10):.1f}" width="{bar - 1:.1f}" '
        f'height="{r / top * (h - 10):.1f}" fill="#6a9f58">'
        f"<title>{i * width:.0f}–{(i + 1) * width:.0f} s: {r:.3g} images/s</title></rect>"
        for i, r in enumerate(rates.tolist())
    )
    total = sum(c.samples for c in commits)
    summary = contents.success or {}
    overall = f"{total / span:.4g} images/s over {span:.4g} s from the job's start to its last commit"
    if "images_per_s" in summary:
        overall += f"; _SUCCESS records {esc(summary['images_per_s'])} images/s"
    return (
        f'<svg id="timing" width="{w}" height="{h + 14}" role="img">{bars}'
        f'<text x="0" y="{h + 12}">0 s</text><text x="{w - 50}" y="{h + 12}">{span:.4g} s</text></svg>'
        f"<p>Images/s by shard commit time (metadata part written), {bins} bins, peak {top:.4g}; {overall}.</p>"
    )


def _grid(contents: ReportContents) -> str:
    parts = []
    for i, group in enumerate(contents.groups):
        figures = "".join(
            f'<figure><img loading="lazy" src="{esc(t.key)}" width="{t.width}" height="{t.height}" '
            f'alt="sample {t.sample_id}"><figcaption>{t.sample_id}</figcaption></figure>'
            for t in group.thumbs
        )
        parts.append(
            f'<div class="group" id="group-{i}"><h3>{user_text(group.title)} <small>({group.count} samples)</small>'
            f'</h3><div class="row">{figures}</div></div>'
        )
    return "".join(parts)


def render(contents: ReportContents, command: str) -> str:
    """The page (UTF-8 HTML) for `contents`; `command` is the jobs.report command that made it."""
    job = contents.job or {}
    fingerprint = job.get("fingerprint_sha256", "not recorded")
    metrics = (
        _metrics_table(contents.metrics)
        if contents.metrics
        else "<p>No metrics.json: run <code>python -m jobs.fid --out OUT --ref REF</code>.</p>"
    )
    by = {"class": "per class", "prompt": "per prompt", "none": ""}[contents.grouped_by]
    state = "complete" if contents.complete else "incomplete (no _SUCCESS)"
    generation = esc(json.dumps(job.get("fingerprint", {}), indent=1))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dit-worker report: {visible(contents.url, MAX_TEXT)}</title>
<style>{STYLE}</style></head><body>
<h1>{user_text(contents.url, None)}</h1>
<p>{contents.num_samples} samples in {contents.num_shards} shards, {state}.
Job fingerprint <code id="fingerprint">{esc(fingerprint)}</code>.</p>
<h2>Metrics</h2>{metrics}
<details><summary>generation fingerprint (job.json)</summary><pre>{generation}</pre></details>
{scores_section(contents)}
<h2>Timing</h2>{_timing(contents)}
<h2>Samples {by}</h2>{_grid(contents)}
{duplicates_section(contents)}
<p><small>Made by <code id="report-command">{user_text(command, None)}</code>.</small></p>
</body></html>
"""
