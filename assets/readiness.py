"""A version's readiness report as Dagster materialization metadata: a markdown summary, the
plots as markdown images (PNG data URIs, which the UI's markdown view renders) and a few figures
as numbers, which the UI charts across materializations."""

from __future__ import annotations

import base64
import logging

import dagster as dg

from brightrun_pipeline.db.repository import VersionRecord
from brightrun_pipeline.readiness import (
    DIMENSIONS,
    LENGTH_LABELS,
    Distribution,
    Marginal,
    ReadinessReport,
    load_report,
)
from brightrun_pipeline.readiness_plots import PLOTS, plot_png
from brightrun_pipeline.service import Pipeline

log = logging.getLogger(__name__)
# Keys listed per dimension in the summary (the CLI and the console list every key).
MARKDOWN_KEYS = 12


def readiness_metadata(pipeline: Pipeline, record: VersionRecord) -> dict[str, dg.MetadataValue]:
    """The readiness report of a published version as materialization metadata. The version is
    published already: a report that cannot be made is shown as such, never raised."""
    try:
        report = load_report(pipeline, record.training_file_id, record.version)
        plots = {name: plot_png(report, name) for name in PLOTS}
    except Exception as exc:  # noqa: BLE001
        log.exception("readiness report of %s v%s", record.training_file_id, record.version)
        return {"readiness": dg.MetadataValue.md(
            f"**The readiness report could not be made:** {type(exc).__name__}: {exc}")}
    over = next(w.count for w in report.warnings if w.code == "over_context")
    return {
        "readiness": dg.MetadataValue.md(markdown(report)),
        "readiness_plots": dg.MetadataValue.md(plots_markdown(plots)),
        "readiness_warnings": dg.MetadataValue.int(sum(w.count for w in report.warnings)),
        "examples_over_context": dg.MetadataValue.int(over),
        "total_tokens": dg.MetadataValue.int(report.total_tokens),
        "human_reviewed_percentage": dg.MetadataValue.float(report.human_review.pairs_share),
        "persona_arc_topic_coverage": dg.MetadataValue.float(report.balance.coverage),
    }


def plots_markdown(plots: dict[str, bytes]) -> str:
    """Markdown images of PNG plots, embedded as base64 data URIs."""
    return "\n\n".join(
        f"**{PLOTS[name][0]}**\n\n"
        f"![{PLOTS[name][0]}](data:image/png;base64,{base64.b64encode(data).decode()})"
        for name, data in plots.items())


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: ReadinessReport) -> str:
    """The report's figures and warnings as markdown."""
    r = report
    tokens = f"{r.tokenizer.name}{'' if r.tokenizer.exact else ', approximate'}"
    lines = [f"### Readiness of version {r.version}", "",
             f"**{r.examples:,} training examples** of {r.training_pairs:,} pairs in "
             f"{r.conversations:,} conversations · **{r.total_tokens:,} tokens** ({tokens}) · "
             f"context length {r.limits.context_tokens:,}", ""]
    if r.split:
        lines += ["Split: " + " · ".join(
            f"**{s.side}** {s.conversations:,} conversations ({s.conversations_share:.1f} %), "
            f"{s.examples:,} examples, {s.total_tokens:,} tokens" for s in r.split), ""]
    lines += ["#### Warnings", ""]
    raised = r.raised()
    lines += [f"- **{w.count} {w.title}**: "
              + ", ".join(f"`{i}`" for i in w.example_ids)
              + (f" and {w.count - len(w.example_ids)} more"
                 if w.count > len(w.example_ids) else "")
              for w in raised] or ["None: every example has a system and a user message, fits "
                                   "the context length and has a non-empty target of at most "
                                   f"{r.limits.long_response_tokens:,} tokens."]
    h, q = r.human_review, r.quality
    lines += ["", "#### Quality and review", "",
              f"Human-reviewed: {h.reviewed_pairs} of {h.pairs} pairs ({h.pairs_share:.1f} %), "
              f"{h.reviewed_examples} of {h.examples} training examples "
              f"({h.examples_share:.1f} %). Quality score mean "
              + ("—" if q.mean is None else f"{q.mean:.2f}")
              + f" over {q.scored} scored conversations ({q.unscored} unscored).", "",
              "| tier | conversations | share |", "|---|---:|---:|",
              *(f"| {t.key} | {t.count} | {t.share:.1f} % |" for t in q.tiers),
              "", "#### Lengths per example", "",
              "| | min | median | p95 | max |", "|---|---:|---:|---:|---:|"]
    for name, label in LENGTH_LABELS.items():
        d: Distribution = getattr(r.lengths, name)
        lines.append(f"| {label} | {_number(d.min)} | {_number(d.median)} | {_number(d.p95)} "
                     f"| {_number(d.max)} |")
    b = r.balance
    lines += ["", "#### Persona × arc × topic", "",
              f"{b.cells_observed} of {b.cells_possible} combinations occur "
              f"({b.coverage:.1f} %).", "",
              "| dimension | values | evenness | min/max | counts |", "|---|---:|---:|---:|---|"]
    for name in DIMENSIONS:
        m: Marginal = getattr(b, name)
        shown = ", ".join(f"{_cell(v.key or '(none)')} {v.count}"
                          for v in m.values[:MARKDOWN_KEYS])
        if len(m.values) > MARKDOWN_KEYS:
            shown += f", … {len(m.values) - MARKDOWN_KEYS} more"
        evenness = "—" if m.normalized_entropy is None else f"{m.normalized_entropy:.2f}"
        ratio = "—" if m.min_max_ratio is None else f"{m.min_max_ratio:.2f}"
        lines.append(f"| {name} | {m.distinct} | {evenness} | {ratio} | {shown} |")
    lines += ["", f"_Computed {r.computed_at:%Y-%m-%d %H:%M} UTC; "
                  f"`brightrun files report {r.training_file_id} --version {r.version}`._"]
    return "\n".join(lines)
