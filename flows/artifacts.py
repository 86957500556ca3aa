"""What a person sees of a run in the Prefect UI: a summary, a metrics table, and links.

Building the content is pure (tested without Prefect); publishing is a thin call per artifact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

SUMMARY_KEY = "nbprod-run-summary"
METRICS_KEY = "nbprod-metrics"


def _fmt(value: Any) -> str:
    """A metric for the page: 4 decimals; absent or undefined (NaN) as a dash."""
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4f}"
    return "—" if value is None else str(value)


def _champion_label(champion: Mapping[str, Any] | None) -> str:
    if not champion:
        return "none"
    return f"`{champion.get('version')}` (model `{champion.get('model_tag')}`)"


def summary_markdown(record: Mapping[str, Any], links: Mapping[str, str]) -> str:
    """The run's story on one page: pipeline, outcome, why, metrics, champion before and after."""
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
    reasons = record.get("reasons") or []
    if reasons:
        lines += ["## Gate decision: " + str(record.get("decision", "—")), ""]
        lines += [f"- {r}" for r in reasons] + [""]
    candidate = (record.get("metrics") or {}).get("candidate") or {}
    champion = (record.get("metrics") or {}).get("champion") or {}
    if candidate:
        lines += [
            "## Metrics on the holdout",
            "",
            "| metric | candidate | champion |",
            "|---|---|---|",
        ]
        lines += [f"| {m} | {_fmt(v)} | {_fmt(champion.get(m))} |" for m, v in candidate.items()]
        lines.append("")
    drift = record.get("drift") or {}
    if drift:
        lines += [
            "## Data drift against the reference",
            "",
            f"- drift share: {_fmt(drift.get('drift_share'))} "
            f"({drift.get('n_drifted')} of {drift.get('n_columns')} columns)",
            f"- drifted columns: {', '.join(drift.get('drifted_columns') or []) or 'none'}",
            "",
        ]
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
    if links:
        lines += ["## Files", ""] + [f"- [{name}]({url})" for name, url in links.items()]
    return "\n".join(lines)


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
    from prefect.artifacts import (
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    version = record.get("version")
    create_markdown_artifact(
        markdown=summary_markdown(record, links),
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
    for name, url in links.items():
        create_link_artifact(
            link=url, link_text=name, key=artifact_key(name), description=f"run {version}: {name}"
        )


def artifact_key(name: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower())
    return "nbprod-" + "-".join(part for part in slug.split("-") if part)
