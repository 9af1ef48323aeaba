"""The page's form "Data-subject request": CSRF token, the request recorded in the project's own
table (retention.rights.requests.submit: the address stays out of Airflow) and its run triggered
with the request id alone, and the form's answer.
"""

from __future__ import annotations

from urllib.parse import quote

from retention_ui.source import source_dsn


def csrf_token(user_id: str) -> str:
    """The form's token for one user: an HMAC of their id with the api-server's secret key, so
    only a page the api-server served to them holds it (a cross-site form cannot)."""
    import hashlib
    import hmac

    from airflow.configuration import conf

    secret = conf.get("api", "secret_key", fallback="") or ""
    return hmac.new(secret.encode(), f"retention-subject-request:{user_id}".encode(), hashlib.sha256).hexdigest()


def hmac_equal(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def record_and_trigger(form: dict[str, str], user_name: str) -> dict:
    """Record the request (refused: SubjectRequestError, nothing written), then trigger its run
    with the request id alone. Returns the run id, and whether the DAG is paused."""
    import datetime as dt

    import psycopg
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.models.dag import DagModel
    from airflow.utils.types import DagRunTriggeredByType
    from retention.airflow_names import SUBJECT_REQUESTS_DAG_ID
    from retention.rights import requests as subject_requests
    from retention.rights.requests import SubjectRequestError

    kind = form.get("subject_kind", "")
    subject = form.get("subject", "")
    if kind in subject_requests.ID_KINDS and not subject.strip().isdigit():
        raise SubjectRequestError(f"a request for a {kind} needs its id (a positive integer)")
    try:
        received_on = dt.date.fromisoformat(form["received_on"]) if form.get("received_on") else None
    except ValueError as exc:
        raise SubjectRequestError("received_on must be a date (YYYY-MM-DD)") from exc
    with psycopg.connect(source_dsn("rights_conn_id"), autocommit=True, application_name="retention:ui") as conn:
        received = subject_requests.submit(
            conn,
            request_id=form.get("request_id", ""),
            action=form.get("action", ""),
            kind=kind,
            subject_id=int(subject) if kind in subject_requests.ID_KINDS else None,
            email=subject if kind == "email" else None,
            received_on=received_on,
            marketing_objection=form.get("marketing_objection") == "on",
            submitted_by=user_name,
        )
    preview = form.get("preview") == "on"
    result = {"request_id": received.request_id, "action": received.action, "kind": received.kind, "preview": preview}
    try:
        run = trigger_dag(
            SUBJECT_REQUESTS_DAG_ID,
            triggered_by=DagRunTriggeredByType.UI,
            triggering_user_name=user_name,
            conf={"request_id": received.request_id, "preview": preview},
            logical_date=None,
        )
    except Exception as exc:  # the request stays recorded: it can be triggered by its id
        return result | {"run_id": None, "trigger_error": type(exc).__name__}
    dag = DagModel.get_dagmodel(SUBJECT_REQUESTS_DAG_ID)
    return result | {"run_id": run.run_id, "paused": bool(dag and dag.is_paused)}


def _preview_next(result: dict) -> str:
    """What follows a request triggered in preview."""
    if not result["preview"]:
        return ""
    if result["action"] == "erasure":
        return " in preview: it waits for an approval (Browse &rarr; Required Actions), then erases in the same run"
    return " in preview: read its report, then submit the same request with preview off"


def render_request_result(result: dict | None, error: str | None = None) -> str:
    """The form's answer: what was recorded and the run triggered (never the address)."""
    from html import escape

    from retention.airflow_names import SUBJECT_REQUESTS_DAG_ID

    if error is not None:
        body = f'<p class="refused" data-testid="refused">Refused, nothing recorded: {escape(error)}</p>'
    elif result["run_id"] is None:
        body = (
            f'<p data-testid="recorded">Request <strong>{escape(result["request_id"])}</strong> recorded, but its run '
            f"could not be triggered ({escape(result['trigger_error'])}): trigger {SUBJECT_REQUESTS_DAG_ID} with "
            f'{{"request_id": "{escape(result["request_id"])}"}} (docs/subject-requests.md), or submit the same request again.</p>'
        )
    else:
        runs = f"../dags/{SUBJECT_REQUESTS_DAG_ID}/runs/{quote(result['run_id'], safe='')}"
        paused = (
            f"<p><strong>{SUBJECT_REQUESTS_DAG_ID} is paused</strong>: unpause it (it has no schedule) for the run "
            "to start.</p>"
            if result["paused"]
            else ""
        )
        body = (
            f'<p data-testid="recorded">Request <strong>{escape(result["request_id"])}</strong> recorded '
            f"({escape(result['action'])}, by {escape(result['kind'])}); run "
            f'<a target="_top" href="{escape(runs)}">{escape(result["run_id"])}</a> triggered'
            f"{_preview_next(result)}.</p>"
            f"{paused}"
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Data-subject request</title></head>'
        f'<body style="font: 14px system-ui, sans-serif; margin: 16px 24px">{body}<p><a href="./">Back</a></p></body></html>'
    )
