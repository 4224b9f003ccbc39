"""One message per failed asset check (WARN or ERROR), to a Slack-compatible webhook, else to the log.

A sensor reads the instance's check evaluations after its cursor. The cursor holds the last event read
and the alerts not yet delivered: an alert leaves it only once the webhook said 2xx, so each failure is
sent once however often the sensor ticks, and a webhook that is down loses nothing (the alert waits for
the next tick). The webhook URL is a credential: it is read from an EnvVar and no message carries it.
"""

from __future__ import annotations

import json
import time

import dagster as dg
import httpx

from finops_pipeline.settings import FinopsSettings

BATCH = 500        # evaluations read per tick
ATTEMPTS = 3       # per alert and tick, 1 s then 2 s apart
TIMEOUT_SECONDS = 10


def alert_text(evaluation, partition: str | None, run_id: str, dagster_url: str) -> str:
    """"ERROR: cost_reconciliation 2026-11-18, check billed_vs_traced_gap failed: openai: billed $41.99 vs
    traced $36.46, gap +5.53 USD (+13.2%) ERROR ... <link|run 1a2b3c4d>"."""
    day = f" {partition}" if partition else ""
    link = f"{dagster_url.rstrip('/')}/runs/{run_id}" if run_id else dagster_url
    return (f"{evaluation.severity.value}: {evaluation.asset_key.to_user_string()}{day}, check "
            f"{evaluation.check_name} failed: {evaluation.description or 'no description'} "
            f"<{link}|run {run_id[:8]}>")


def _post(url: str, text: str) -> str | None:
    """Deliver one alert; None when delivered, else why not (never the URL, which is a credential)."""
    reason = None
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(attempt)
        try:
            status = httpx.post(url, json={"text": text}, timeout=TIMEOUT_SECONDS).status_code
        except httpx.HTTPError as exc:
            reason = type(exc).__name__
            continue
        if 200 <= status < 300:
            return None
        reason = f"HTTP {status}"
        if status < 500 and status != 429:
            break  # the webhook refuses this message: retrying will not help this tick
    return reason


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="One message per failed asset check (WARN or ERROR) to FINOPS_ALERT_WEBHOOK_URL, else the log; "
                "each sent once, kept and retried while the webhook is down.",
)
def check_failure_alerts(context: dg.SensorEvaluationContext, settings: FinopsSettings):
    state = json.loads(context.cursor) if context.cursor else {"after": None, "pending": []}
    # The storage's own query: the instance's wrapper is deprecated, with no replacement for check events.
    records = context.instance.event_log_storage.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=state["after"]),
        ascending=True, limit=BATCH)
    pending: list[dict] = state["pending"]
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if not evaluation.passed:
            run = context.instance.get_run_by_id(record.run_id) if record.run_id else None
            day = evaluation.partition or (run.tags.get("dagster/partition") if run else None)
            pending.append({"id": record.storage_id,
                            "text": alert_text(evaluation, day, record.run_id, settings.dagster_url)})
    if records:
        state["after"] = records[-1].storage_id

    undelivered = []
    for alert in pending:
        if not settings.alert_webhook_url:
            context.log.warning(alert["text"])
            continue
        reason = None if undelivered else _post(settings.alert_webhook_url, alert["text"])
        if undelivered or reason:  # once the webhook fails, the rest wait too: the tick stays short
            undelivered.append(alert)
            if reason:
                context.log.warning(f"webhook down ({reason} after {ATTEMPTS} attempts): {len(pending)} alerts kept "
                                    "for the next tick")
    state["pending"] = undelivered
    context.update_cursor(json.dumps(state))
    if records or pending:
        return dg.SkipReason(f"{len(records)} check evaluations read; {len(pending) - len(undelivered)} alerts sent, "
                             f"{len(undelivered)} waiting for the webhook")
    return dg.SkipReason("no new check evaluations")
