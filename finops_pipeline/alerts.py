"""One message per failed asset check evaluation (WARN or ERROR), to a Slack-compatible webhook, else to the log.

The sensor reads the instance's asset check executions (`EventLogStorage.get_asset_check_execution_history`:
one row per check, run and day, in the index every storage keeps: SQLite's run-sharded event log and
Postgres alike). A row's id is given when its run plans the check and keeps it when the result arrives, so
the cursor holds a *watermark* below which every row is settled, and the ids above it already handled;
a row still planned (its run is going) holds the watermark until its result comes or its run ends. Each
failed evaluation is sent once however often the sensor ticks; a day re-run that fails again is a new
row, so it alerts again. A check that shows a standing state every day (budget_thresholds, cost_anomalies)
says in its metadata how many of its findings are new (`new_alerts`) and what they are (`alert`): only an
evaluation with news is sent, with that text. The cursor also keeps the alerts not yet delivered: one leaves it only when the
webhook said 2xx, so a webhook that is down loses nothing. The cursor is stored by the instance, so it
survives restarts of the daemon. The webhook URL is a credential: read from an EnvVar, in no message.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import dagster as dg
import httpx

from finops_pipeline.settings import FinopsSettings

PAGE = 200          # execution rows read per query
ATTEMPTS = 3        # per alert and tick, 1 s then 2 s apart
TIMEOUT_SECONDS = 10
# An execution row's status (AssetCheckExecutionRecordStatus, which the dagster package does not export).
_FAILED, _PLANNED = "FAILED", "PLANNED"


def alert_text(evaluation: dg.AssetCheckEvaluation, run_id: str, dagster_url: str) -> str:
    """"ERROR: cost_reconciliation 2026-11-18, check billed_vs_traced_gap failed: openai: billed $41.99 vs
    traced $36.46, gap +5.53 USD (+13.2%) ERROR ... <link|run 1a2b3c4d>". The day is the evaluation's own."""
    day = f" {evaluation.partition}" if evaluation.partition else ""
    asset = evaluation.asset_key.to_user_string()
    if run_id:
        link = f"<{dagster_url.rstrip('/')}/runs/{run_id}|run {run_id[:8]}>"
    else:  # recorded without a run (the delivery deadline's sensor): the asset's checks
        link = f"<{dagster_url.rstrip('/')}/assets/{'/'.join(evaluation.asset_key.path)}?view=checks|{asset} checks>"
    alert = evaluation.metadata.get("alert")  # a check that keeps showing a state says what is new in it
    what = alert.value if alert is not None else (evaluation.description or "no description")
    return f"{evaluation.severity.value}: {asset}{day}, check {evaluation.check_name} failed: {what} {link}"


def _news(evaluation: dg.AssetCheckEvaluation) -> bool:
    """Whether a failed evaluation is to be alerted: always, except for a check that shows a standing state
    every day (budgets, anomalies) and counts in `new_alerts` what its run found first."""
    new = evaluation.metadata.get("new_alerts")
    return new is None or bool(new.value)


@dataclass
class AlertCursor:
    """What the sensor keeps between ticks (JSON in the sensor's cursor)."""

    watermark: int = 0                                 # every execution row with id <= this is settled
    handled: set[int] = field(default_factory=set)     # settled rows above the watermark
    pending: list[dict] = field(default_factory=list)  # alerts the webhook has not taken yet: {"id", "text"}

    @classmethod
    def load(cls, raw: str | None) -> AlertCursor:
        state = json.loads(raw) if raw else {}
        return cls(state.get("watermark", 0), set(state.get("handled", [])), state.get("pending", []))

    def dump(self) -> str:
        return json.dumps({"watermark": self.watermark, "handled": sorted(self.handled), "pending": self.pending})


def new_executions(storage, check_keys, watermark: int) -> list:
    """Every execution row of `check_keys` with an id above `watermark`, oldest first."""
    rows = []
    for key in check_keys:
        cursor = None
        while True:  # the storage pages newest first
            page = storage.get_asset_check_execution_history(key, limit=PAGE, cursor=cursor)
            newer = [r for r in page if r.id > watermark]
            rows += newer
            if len(newer) < PAGE:
                break
            cursor = page[-1].id
    return sorted(rows, key=lambda r: r.id)


def collect(context: dg.SensorEvaluationContext, state: AlertCursor, dagster_url: str) -> int:
    """Add the alerts of the failed evaluations the cursor has not seen to `state.pending`, and move the
    watermark up to the oldest row still waiting for its result. Returns the rows read."""
    check_keys = sorted(context.repository_def.asset_graph.asset_check_keys, key=str)
    rows = new_executions(context.instance.event_log_storage, check_keys, state.watermark)
    waiting = []
    for row in rows:
        if row.id in state.handled:
            continue
        if row.status.value == _PLANNED:
            run = context.instance.get_run_by_id(row.run_id)
            if run is not None and not run.is_finished:
                waiting.append(row.id)  # its result is still to come
                continue
            # its run ended without a result (a step failed before the check ran): nothing to judge
        elif row.status.value == _FAILED:
            evaluation = row.event.dagster_event.event_specific_data
            if _news(evaluation):
                state.pending.append({"id": row.id, "text": alert_text(evaluation, row.run_id, dagster_url)})
        state.handled.add(row.id)
    top = max([state.watermark, *(r.id for r in rows)])
    state.watermark = min(waiting) - 1 if waiting else top
    state.handled = {i for i in state.handled if i > state.watermark}
    return len(rows)


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
    description="One message per failed asset check evaluation (WARN or ERROR), naming its day, to "
                "FINOPS_ALERT_WEBHOOK_URL, else the log; each sent once, kept and retried while the webhook is down.",
)
def check_failure_alerts(context: dg.SensorEvaluationContext, settings: FinopsSettings):
    state = AlertCursor.load(context.cursor)
    read = collect(context, state, settings.dagster_url)
    sent, undelivered = 0, []
    for alert in state.pending:
        if not settings.alert_webhook_url:
            context.log.warning(alert["text"])
            sent += 1
            continue
        reason = None if undelivered else _post(settings.alert_webhook_url, alert["text"])
        if undelivered or reason:  # once the webhook fails, the rest wait too: the tick stays short
            if reason:
                context.log.warning(f"webhook down ({reason} after {ATTEMPTS} attempts): "
                                    f"{len(state.pending) - sent} alerts kept for the next tick")
            undelivered.append(alert)
        else:
            sent += 1
    state.pending = undelivered
    context.update_cursor(state.dump())
    return dg.SkipReason(f"{read} check executions read; {sent} alerts sent, {len(undelivered)} waiting for the webhook")
