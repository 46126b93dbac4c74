"""The readiness report's plots as PNG images (matplotlib, Agg canvas, no display).

Each plot is drawn from a `ReadinessReport` alone (its histograms and counts), so a stored
report is all a front door needs to show them.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # no display, whatever the environment says

from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from brightrun_pipeline.readiness import TIERS, Distribution, ReadinessReport  # noqa: E402

# 800 × 450 pixels.
SIZE = (8.0, 4.5)
DPI = 100
# The most rows, columns or bars a plot shows; the rest are summed up as "other".
MAX_KEYS = 12
TIER_COLORS = {"seed_dataset": "#2e7d32", "production": "#1565c0", "experimental": "#ef8f00",
               "rejected": "#c62828", "unscored": "#9e9e9e"}
TIER_LABELS = {"seed_dataset": "seed dataset (≥ 4.5)", "production": "production (3.5–4.5)",
               "experimental": "experimental (2.5–3.5)", "rejected": "rejected (< 2.5)",
               "unscored": "unscored"}
PROMPT_COLOR, TOTAL_COLOR, TARGET_COLOR, LIMIT_COLOR = "#1565c0", "#263238", "#ef8f00", "#c62828"


def _figure() -> Figure:
    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    figure.patch.set_facecolor("white")
    return figure


def _png(figure: Figure) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out.getvalue()


def _spread(d: Distribution) -> str:
    if not d.count:
        return "no examples"
    return f"median {d.median:,.0f} · p95 {d.p95:,.0f} · max {d.max:,}"


def _limit_line(ax: Axes, value: int, label: str) -> None:
    ax.axvline(value, color=LIMIT_COLOR, linestyle="--", linewidth=1.5, label=label)


def lengths_plot(report: ReadinessReport) -> bytes:
    """Prompt and total tokens per example against the context length; target tokens against
    the very-long limit."""
    lengths, limits = report.lengths, report.limits
    unit = f"tokens ({report.tokenizer.name}{'' if report.tokenizer.exact else ', approx.'})"
    figure = _figure()
    figure.suptitle(f"Example lengths — {report.file_name}, version {report.version}",
                    fontsize=12, fontweight="bold")
    left, right = figure.subplots(1, 2, width_ratios=[3, 2])
    prompt, total = lengths.prompt_tokens, lengths.total_tokens
    left.stairs(prompt.histogram.counts, prompt.histogram.edges, fill=True, alpha=0.55,
                color=PROMPT_COLOR, label=f"prompt ({_spread(prompt)})")
    left.stairs(total.histogram.counts, total.histogram.edges, color=TOTAL_COLOR,
                linewidth=1.6, label=f"whole example ({_spread(total)})")
    over = next(w.count for w in report.warnings if w.code == "over_context")
    _limit_line(left, limits.context_tokens,
                f"context length {limits.context_tokens:,} ({over} over)")
    left.set_title("Prompt and whole example", fontsize=10)
    left.set_xlabel(unit)
    left.set_ylabel("training examples")
    left.set_xlim(0, max(total.histogram.edges[-1], limits.context_tokens) * 1.03)
    left.legend(fontsize=7.5, loc="upper right", framealpha=0.9)

    target = lengths.target_tokens
    right.stairs(target.histogram.counts, target.histogram.edges, fill=True, alpha=0.75,
                 color=TARGET_COLOR, label=_spread(target))
    long = next(w.count for w in report.warnings if w.code == "long_target")
    _limit_line(right, limits.long_response_tokens,
                f"very long > {limits.long_response_tokens:,} ({long})")
    right.set_title("Target response", fontsize=10)
    right.set_xlabel(unit)
    right.set_ylabel("training examples")
    right.set_xlim(0, max(target.histogram.edges[-1], limits.long_response_tokens) * 1.03)
    right.legend(fontsize=7.5, loc="upper right", framealpha=0.9)
    peaks = (max(prompt.histogram.counts + total.histogram.counts + [1]),
             max(target.histogram.counts + [1]))
    for ax, peak in zip((left, right), peaks, strict=True):
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, peak * 1.4)  # room for the legend above the bars
        ax.yaxis.get_major_locator().set_params(integer=True)
    return _png(figure)


def quality_plot(report: ReadinessReport) -> bytes:
    """The histogram of conversation quality scores, coloured by tier, and the tier counts."""
    quality = report.quality
    figure = _figure()
    figure.suptitle(f"Conversation quality — {report.file_name}, version {report.version}",
                    fontsize=12, fontweight="bold")
    left, right = figure.subplots(1, 2, width_ratios=[3, 2])
    edges, counts = quality.histogram.edges, quality.histogram.counts
    for start, end, count in zip(edges, edges[1:], counts, strict=False):
        tier = _tier_of(start)
        left.bar(start, count, width=end - start, align="edge", color=TIER_COLORS[tier],
                 edgecolor="white", linewidth=0.8)
    for threshold in (2.5, 3.5, 4.5):
        left.axvline(threshold, color="#616161", linestyle=":", linewidth=1)
    left.set_xlim(0, 5)
    left.set_xlabel("quality score (tier thresholds dotted)")
    left.set_ylabel("conversations")
    mean = "—" if quality.mean is None else f"{quality.mean:.2f}"
    left.set_title(f"{quality.scored} scored, {quality.unscored} unscored; mean {mean}",
                   fontsize=10)
    left.grid(axis="y", alpha=0.3)
    left.yaxis.get_major_locator().set_params(integer=True)

    tiers = list(reversed(quality.tiers))
    bars = right.barh([TIER_LABELS[t.key or "unscored"] for t in tiers],
                      [t.count for t in tiers],
                      color=[TIER_COLORS[t.key or "unscored"] for t in tiers])
    right.bar_label(bars, labels=[f"{t.count} ({t.share:.0f} %)" for t in tiers], padding=3,
                    fontsize=8)
    right.set_title("Tiers", fontsize=10)
    right.set_xlabel("conversations")
    right.set_xlim(0, max([t.count for t in tiers] + [1]) * 1.35)
    right.tick_params(axis="y", labelsize=8)
    right.xaxis.get_major_locator().set_params(integer=True)
    return _png(figure)


def _tier_of(bin_start: float) -> str:
    tier = "rejected"
    for name, threshold in (("experimental", 2.5), ("production", 3.5), ("seed_dataset", 4.5)):
        if bin_start >= threshold - 1e-9:
            tier = name
    return tier


def _top(keys: Sequence[str | None]) -> tuple[list[str | None], bool]:
    """The first MAX_KEYS keys (already largest first), and whether others were left out."""
    if len(keys) <= MAX_KEYS:
        return list(keys), False
    return list(keys[:MAX_KEYS - 1]), True


def _label(key: str | None) -> str:
    return "(none)" if key is None else key.replace("_", " ")


OTHER = "other"


def balance_plot(report: ReadinessReport) -> bytes:
    """Persona × arc as a heatmap of conversation counts, and the topic counts."""
    balance = report.balance
    personas, more_personas = _top([v.key for v in balance.persona.values])
    arcs, more_arcs = _top([v.key for v in balance.arc.values])
    rows = [*map(_label, personas), *([OTHER] if more_personas else [])]
    columns = [*map(_label, arcs), *([OTHER] if more_arcs else [])]
    grid = [[0] * len(columns) for _ in rows]
    for cell in balance.cells:
        row = personas.index(cell.persona) if cell.persona in personas else len(rows) - 1
        column = arcs.index(cell.arc) if cell.arc in arcs else len(columns) - 1
        grid[row][column] += cell.count

    figure = _figure()
    figure.suptitle(f"Persona × arc × topic — {report.file_name}, version {report.version}",
                    fontsize=12, fontweight="bold")
    left, right = figure.subplots(1, 2, width_ratios=[3, 2])
    peak = max((max(r) for r in grid), default=0) or 1
    left.imshow(grid, cmap="Blues", vmin=0, vmax=peak * 1.15, aspect="auto")
    for i, row in enumerate(grid):
        for j, count in enumerate(row):
            if count:
                left.text(j, i, str(count), ha="center", va="center", fontsize=8.5,
                          color="white" if count > peak * 0.6 else "#0d47a1")
    row_totals = [sum(r) for r in grid]
    column_totals = [sum(r[j] for r in grid) for j in range(len(columns))]
    left.set_xticks(range(len(columns)),
                    [f"{c} ({n})" for c, n in zip(columns, column_totals, strict=True)],
                    rotation=35, ha="right", fontsize=7.5)
    left.set_yticks(range(len(rows)),
                    [f"{r} ({n})" for r, n in zip(rows, row_totals, strict=True)], fontsize=7.5)
    left.set_xticks([x - 0.5 for x in range(1, len(columns))], minor=True)
    left.set_yticks([y - 0.5 for y in range(1, len(rows))], minor=True)
    left.grid(which="minor", color="white", linewidth=1.5)
    left.tick_params(which="minor", length=0)
    left.set_xlabel("emotional arc")
    left.set_ylabel("persona")
    coverage = (f"{balance.cells_observed} of {balance.cells_possible} persona-arc-topic "
                f"combinations occur")
    evenness = balance.persona.normalized_entropy, balance.arc.normalized_entropy
    left.set_title(f"Conversations per persona and arc; {coverage}"
                   + ("" if None in evenness else
                      f"\nevenness: personas {evenness[0]:.2f}, arcs {evenness[1]:.2f}"),
                   fontsize=9)

    topics, more_topics = _top([v.key for v in balance.topic.values])
    counts = [v.count for v in balance.topic.values]
    shown = counts[:len(topics)] + ([sum(counts[len(topics):])] if more_topics else [])
    labels = [*map(_label, topics), *([OTHER] if more_topics else [])]
    bars = right.barh(labels[::-1], shown[::-1], color="#5c6bc0")
    right.bar_label(bars, padding=2, fontsize=7.5)
    topic_evenness = balance.topic.normalized_entropy
    right.set_title("Conversations per topic"
                    + ("" if topic_evenness is None else f"\nevenness {topic_evenness:.2f}"),
                    fontsize=9)
    right.set_xlabel("conversations")
    right.set_xlim(0, max(shown + [1]) * 1.2)
    right.tick_params(axis="y", labelsize=7.5)
    right.xaxis.get_major_locator().set_params(integer=True)
    return _png(figure)


PLOTS: dict[str, tuple[str, Callable[[ReadinessReport], bytes]]] = {
    "lengths": ("Example lengths in tokens", lengths_plot),
    "quality": ("Quality scores and tiers", quality_plot),
    "balance": ("Persona × arc × topic", balance_plot),
}
PLOT_NAMES = tuple(PLOTS)

_cache: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
_lock = threading.Lock()


def plot_png(report: ReadinessReport, name: str) -> bytes:
    """One plot of a report as PNG bytes (kept for the report's next viewers); KeyError for an
    unknown name."""
    draw = PLOTS[name][1]
    key = (report.training_file_id, report.version, report.jsonl_sha256, report.computed_at,
           report.limits.context_tokens, report.limits.long_response_tokens, name)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    data = draw(report)
    with _lock:
        _cache[key] = data
        while len(_cache) > 96:
            _cache.popitem(last=False)
    return data


def report_plots(report: ReadinessReport) -> dict[str, bytes]:
    """Every plot of a report by name: lengths, quality, balance."""
    return {name: plot_png(report, name) for name in PLOTS}


# The tiers, in the order the plots use.
__all__ = ["PLOT_NAMES", "PLOTS", "TIERS", "plot_png", "report_plots"]
