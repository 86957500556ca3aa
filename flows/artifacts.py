"""What a person sees of a run in the Prefect UI: a summary, a metrics table, and links.

The summary answers "what happened?" on its own: the gate decision with every check, candidate
against champion with the change, the data validation, a drift table and the run's pictures
(``record["figures"]``, PNG files in the version, shown as images from their http links:
flows.links). Building the content is pure (tested without Prefect); publishing is a thin call
per artifact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

SUMMARY_KEY = "nbprod-run-summary"
METRICS_KEY = "nbprod-metrics"
DRIFT_TABLE_ROWS = 15  # in the summary; the Evidently drift report has every column


def _fmt(value: Any) -> str:
    """A metric for the page: 4 decimals; absent or undefined (NaN) as a dash."""
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4f}"
    return "—" if value is None else str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _champion_label(champion: Mapping[str, Any] | None) -> str:
    if not champion:
        return "none"
    return f"`{champion.get('version')}` (model `{champion.get('model_tag')}`)"


def drift_table(per_column: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-column drift rows (column, method, score, threshold, drifted), most drifted first.

    Takes Evidently's per-column digest (flows.reports: ``drift_score``, ``method``) or the
    fast check's columns (flows.drift: ``score``, ``method_name``).
    """
    from flows.figures import drift_strength

    rows = [
        {
            "column": column,
            "method": str(found.get("method_name") or found.get("method")),
            "score": found.get("drift_score", found.get("score")),
            "threshold": found.get("threshold"),
            "drifted": found.get("drifted"),
        }
        for column, found in per_column.items()
    ]
    return sorted(rows, key=lambda r: (r["drifted"] is not True, -drift_strength(r), r["column"]))


def _flag(value: Any) -> str:
    return {True: "**yes**", False: "no"}.get(value, "—")


def drift_markdown(drift: Mapping[str, Any], what: str) -> list[str]:
    """The drift section: share, verdict and the table of the most drifted columns."""
    if not drift:
        return []
    share = _number(drift.get("drift_share"))
    threshold = drift.get("drift_share_threshold")
    verdict = {True: "dataset drift", False: "no dataset drift"}.get(
        drift.get("dataset_drift"), str(drift.get("verdict") or "—")
    )
    lines = [
        f"## Data drift: {what}",
        "",
        f"- {verdict}: {drift.get('n_drifted')} of {drift.get('n_columns')} columns drifted "
        f"(share {'—' if share is None else f'{share:.2f}'}; dataset drift at ≥ {threshold})",
    ]
    table = drift_table_markdown(drift)
    if table:
        lines += ["", *table]
    elif drift.get("drifted_columns") is not None:
        lines.append(f"- drifted columns: {', '.join(drift['drifted_columns']) or 'none'}")
    return [*lines, ""]


def drift_table_markdown(drift: Mapping[str, Any]) -> list[str]:
    """The most drifted columns as a table (``drift["table"]``: :func:`drift_table`'s rows)."""
    rows = drift.get("table") or []
    if not rows:
        return []
    lines = ["| column | method | score | threshold | drifted |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['column']} | {r['method']} | {_fmt(r['score'])} | {_fmt(r['threshold'])} "
        f"| {_flag(r['drifted'])} |"
        for r in rows[:DRIFT_TABLE_ROWS]
    ]
    more = int(drift.get("n_columns") or len(rows)) - min(len(rows), DRIFT_TABLE_ROWS)
    if more > 0:
        lines += ["", f"{more} more column(s) in the data drift report."]
    return lines


def figures_markdown(record: Mapping[str, Any], links: Mapping[str, str], kind: str) -> list[str]:
    """The run's pictures of one kind (``model``, ``drift``) as markdown images."""
    lines = []
    for figure in record.get("figures") or []:
        url = links.get(str(figure.get("title")))
        if figure.get("kind") == kind and url:
            lines += [f"**{figure['title']}**", "", f"![{figure['title']}]({url})", ""]
    return lines


def figure_titles(record: Mapping[str, Any]) -> set[str]:
    """Link names that are pictures (shown inline, not as link artifacts)."""
    return {str(f.get("title")) for f in record.get("figures") or []}


def gate_markdown(record: Mapping[str, Any]) -> list[str]:
    """The gate decision with every check (older records: the reasons they kept)."""
    checks = record.get("checks") or []
    reasons = record.get("reasons") or []
    if not checks and not reasons:
        return []
    lines = ["## Gate decision: " + str(record.get("decision", "—")), ""]
    if checks:
        kinds = {"floor": "floor", "champion": "vs champion"}
        lines += ["| result | kind | check |", "|---|---|---|"]
        lines += [
            f"| {'pass' if c.get('passed') else '**FAIL**'} "
            f"| {kinds.get(str(c.get('kind')), c.get('kind'))} | {c.get('message')} |"
            for c in checks
        ]
    else:
        lines += [f"- {r}" for r in reasons]
    return [*lines, ""]


def metrics_markdown(record: Mapping[str, Any]) -> list[str]:
    """Candidate against champion on the same holdout rows, with the change and its sense."""
    from flows.tasks import higher_is_better

    candidate = (record.get("metrics") or {}).get("candidate") or {}
    champion = (record.get("metrics") or {}).get("champion") or {}
    if not candidate:
        return []
    lines = [
        "## Metrics on the holdout",
        "",
        "| metric | candidate | champion | change |",
        "|---|---|---|---|",
    ]
    for metric, value in candidate.items():
        new, old = _number(value), _number(champion.get(metric))
        change = "—"
        if new is not None and old is not None:
            delta = new - old
            try:
                better = (delta > 0) == higher_is_better(metric)
                sense = "" if delta == 0 else (" (better)" if better else " (worse)")
            except ValueError:  # a notebook's own metric: no known direction
                sense = ""
            change = f"{delta:+.4f}{sense}"
        shown = [_fmt(v) for v in (value, champion.get(metric))]
        if metric == "rows":  # a count, not a score
            shown = [str(int(v)) if _number(v) is not None else "—" for v in (new, old)]
            change = "—" if new is None or old is None else f"{int(new - old):+d}"
        lines.append(f"| {metric} | {shown[0]} | {shown[1]} | {change} |")
    return [*lines, ""]


def validation_markdown(record: Mapping[str, Any]) -> list[str]:
    """The data validation: passed with what was checked, or the failure."""
    checked = record.get("validation")
    if record.get("failed_step") == "validate-input-data":
        return ["## Data validation: failed", "", f"- {record.get('error')}", ""]
    if not checked:
        return []
    window = checked.get("window") or [None, None]
    missing = _number(checked.get("missing_share"))
    return [
        "## Data validation: passed",
        "",
        f"- {checked.get('rows')} rows in the window {window[0] or 'start'} → "
        f"{window[1] or 'end'}, checked against the reference's schema "
        f"({checked.get('reference_rows')} rows; {checked.get('numerical')} numerical, "
        f"{checked.get('categorical')} categorical columns)",
        f"- missing cells {0.0 if missing is None else missing:.2%}; duplicated rows "
        f"{checked.get('duplicated_rows')}; constant columns {checked.get('constant_columns')}",
        "",
    ]


def summary_markdown(
    record: Mapping[str, Any], links: Mapping[str, str], notice: str | None = None
) -> str:
    """The run's story on one page: outcome, why, metrics, pictures, data, champion, files."""
    from flows.run_records import pipeline_of

    status = record.get("status", "unknown")
    lines = [f"# nbprod run `{record.get('version')}`: **{status.upper()}**", ""]
    task = f" ({record['task']})" if record.get("task") else ""
    lines += [f"Pipeline `{pipeline_of(dict(record))}`{task}.", ""]
    if record.get("error"):
        lines += [f"**Error** in step `{record.get('failed_step')}`: {record['error']}", ""]
    trigger = record.get("trigger") or {}
    if trigger.get("monitoring_version"):
        lines += [
            f"Retraining triggered by drift in monitoring run `{trigger['monitoring_version']}`.",
            "",
        ]
    lines += gate_markdown(record)
    lines += metrics_markdown(record)
    lines += figures_markdown(record, links, "model")
    lines += validation_markdown(record)
    lines += drift_markdown(record.get("drift") or {}, "the training window against the reference")
    lines += figures_markdown(record, links, "drift")
    lines += [
        "## Champion",
        "",
        f"- before: {_champion_label(record.get('champion_before'))}",
        f"- after: {_champion_label(record.get('champion_after'))}",
    ]
    if record.get("bento_tag"):
        lines.append(
            f"- bento: `{record['bento_tag']}` (serve: `bentoml serve {record['bento_tag']}`)"
        )
    lines.append("")
    lines += files_markdown(record, links, notice)
    return "\n".join(lines)


def files_markdown(
    record: Mapping[str, Any], links: Mapping[str, str], notice: str | None
) -> list[str]:
    """The links that are not pictures, and when they stop working."""
    pictures = figure_titles(record)
    files = [f"- [{name}]({url})" for name, url in links.items() if name not in pictures]
    lines = ["## Files", "", *files, ""] if files else []
    return [*lines, f"_{notice}_", ""] if notice and links else lines


def metrics_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    candidate = (record.get("metrics") or {}).get("candidate") or {}
    champion = (record.get("metrics") or {}).get("champion") or {}
    return [
        {
            "metric": m,
            "candidate": round(v, 6) if isinstance(v, float) else v,
            "champion": champion.get(m),
        }
        for m, v in candidate.items()
    ]


def publish_run_artifacts(record: Mapping[str, Any], links: Mapping[str, str]) -> None:
    """Create the markdown summary, the metrics table and one link artifact per file."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from flows.links import resolve_links

    resolved = resolve_links(links)
    version = record.get("version")
    create_markdown_artifact(
        markdown=summary_markdown(record, resolved.urls, resolved.notice),
        key=SUMMARY_KEY,
        description=f"nbprod run {version}: {record.get('status')}",
    )
    rows = metrics_rows(record)
    if rows:
        create_table_artifact(
            table=rows,
            key=METRICS_KEY,
            description=f"Holdout metrics of run {version} vs the champion",
        )
    publish_links(record, resolved.urls, resolved.expires)


def publish_links(
    record: Mapping[str, Any],
    urls: Mapping[str, str],
    expires: str | None,
    prefix: str = "",
) -> None:
    """One link artifact per file (pictures are in the summary), saying when it expires."""
    from prefect.artifacts import create_link_artifact

    version = record.get("version")
    pictures = figure_titles(record)
    for name, url in urls.items():
        if name in pictures:
            continue
        description = f"{prefix}run {version}: {name}" + (f" ({expires})" if expires else "")
        create_link_artifact(
            link=url,
            link_text=name,
            key=artifact_key(f"{prefix}{name}"),
            description=description,
        )


def artifact_key(name: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower())
    return "nbprod-" + "-".join(part for part in slug.split("-") if part)
