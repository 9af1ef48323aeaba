"""Alerts: a failed retention task e-mails through `smtp_default` (the SMTP provider's notifier),
and the watch DAG raises an alarm for overdue records and for purposes without a recent success.
A real SMTP server (aiosmtpd) listens on loopback and keeps what it receives."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
from zoneinfo import ZoneInfo

import pytest

from tests import factories as f
from tests.dag_runs import load_dag, run_dag, task_states, xcoms

PARIS = ZoneInfo("Europe/Paris")


class _Inbox:
    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's handler API
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


@pytest.fixture
def inbox(monkeypatch):
    from aiosmtpd.controller import Controller

    from tools.devstack import free_port

    handler = _Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": controller.port,
        "extra": {"disable_ssl": True, "disable_tls": True, "timeout": 10, "retry_limit": 1},
    }
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW_VAR_RETENTION_ALERT_TO", "dpo@insurer.test")
    yield handler
    controller.stop()


def _text(message) -> str:
    return "\n".join(part.get_content() for part in message.walk() if part.get_content_maintype() == "text")


@pytest.mark.integration
def test_failed_retention_run_sends_an_email(airflow_db, db, s3, storage, inbox, monkeypatch):
    from retention.archive.engine import RetentionEngine

    def crash_after_upload(self, *args, **kwargs):  # dag.test() runs the tasks in this process
        raise RuntimeError("fault injected after the upload")

    quote = f.quote(db, issued="2024-01-10")
    monkeypatch.setattr(RetentionEngine, "_delete_rows", crash_after_upload)
    dag_run = run_dag("quotes", f.midnight("2025-03-01"))
    states = task_states(dag_run)
    # The archive step's unit of the rule failed (a mapped task); the step's merge did not run.
    assert states["archive_unconverted_quotes"] == "failed" and states["archive_and_delete"] != "success", states
    assert f.ids(db, "quotes") == {quote}, "a failed run deletes nothing"
    # One e-mail for the failed task, one for the report (which ran anyway, and keeps the run red).
    assert [m["Subject"] for m in inbox.messages] == [
        f"[retention] FAILED retention_quotes.{task} (run {dag_run.run_id})"
        for task in ("archive_unconverted_quotes", "report")
    ]
    assert states["report"] == "failed" and dag_run.state == "failed"
    assert inbox.recipients == [["dpo@insurer.test"]] * 2
    message = inbox.messages[0]
    body = _text(message)
    assert "fault injected after the upload" in body  # the error
    assert "2025-03-01 00:00" in body  # the logical date, in Paris
    assert "lea.dubois" not in body and "example.fr" not in body

    summary = _summary(dag_run)
    assert summary["outcome"] == "failed" and summary["failed_tasks"] == ["archive_and_delete"]
    assert summary["task_states"]["failed_units"] == "archive_unconverted_quotes_0"
    assert summary["not_run"] == ["purge_archives", "check_after"]
    assert summary["task_states"]["check_before"] == "success" and summary["task_states"]["plan"] == "success"
    assert summary["left_unchanged"].startswith("archive-and-delete failed")
    assert summary["logical_date_paris"] == "2025-03-01 00:00 CET"
    assert summary["table"].startswith("## retention_quotes: RUN FAILED at archive_and_delete")
    assert "| (nothing) |" in summary["table"] and summary["totals"]["deleted"] == 0
    assert summary["mode"] == "enforce"


def _summary(dag_run, key: str = "summary"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id)
            .filter(XComModel.task_id == "report", XComModel.key == key)
            .one()
        )
        value = row.value
    return json.loads(value) if isinstance(value, str) and value.startswith("{") else value


@pytest.mark.integration
def test_successful_run_sends_nothing(airflow_db, db, s3, storage, inbox):
    f.quote(db, issued="2024-01-10")
    dag_run = run_dag("quotes", f.midnight("2025-03-01"))
    assert set(task_states(dag_run).values()) == {"success"}
    assert inbox.messages == []
    summary = _summary(dag_run)
    assert summary["outcome"] == "success" and summary["failed_tasks"] == [] and summary["left_unchanged"] is None
    assert summary["totals"]["deleted"] == 1 and summary["totals"]["objects"] == 1
    assert summary["rules"][0]["rule"] == "unconverted_quotes" and summary["bytes_per_tier"]["intermediate"] > 0
    assert summary["gates"]["before"].endswith("expectations passed")
    assert summary["gates"]["after"].endswith("expectations passed")
    assert "| unconverted_quotes |" in summary["table"]
    assert _summary(dag_run, "return_value") == summary  # the structured summary, also under `summary`


def _run_watch(**conf):
    dag = load_dag("watch")
    return dag.test(logical_date=dt.datetime.now(dt.UTC), run_conf=conf)


@pytest.mark.integration
def test_watch_alarms_on_overdue_records_and_emails(airflow_db, db, s3, storage, inbox):
    today = dt.datetime.now(PARIS).date()
    # Quotes are due 12 months after they are issued: this one has been due for ~20 days.
    from retention.policy.periods import Period

    overdue = f.quote(db, issued=Period(months=12).latest_start(today) - dt.timedelta(days=20))
    held = f.quote(db, issued=today - dt.timedelta(days=900))
    f.legal_hold(db, "quotes", held)
    dag_run = _run_watch(purposes=["quotes"], overdue_days=3, stale_after_hours=24 * 365 * 20)
    assert task_states(dag_run) == {"watch": "failed", "delete_expired_exports": "success"}
    [message] = inbox.messages
    assert message["Subject"].startswith("[retention] FAILED retention_watch.watch")
    body = _text(message)
    assert "quotes: overdue: 1 deletable records due for more than 3 days (unconverted_quotes=1)" in body
    assert f.ids(db, "quotes") == {overdue, held}, "the watch changes nothing"


@pytest.mark.integration
def test_watch_is_quiet_after_a_recent_success(airflow_db, db, s3, storage, inbox):
    f.quote(db, issued="2020-01-10")
    today = dt.datetime.now(PARIS).date()
    assert set(task_states(run_dag("quotes", f.midnight(today))).values()) == {"success"}
    dag_run = _run_watch(purposes=["quotes"], overdue_days=3, stale_after_hours=48)
    assert task_states(dag_run) == {"watch": "success", "delete_expired_exports": "success"}
    summary = xcoms(dag_run)["watch"]
    assert summary["alarms"] == [] and summary["purposes"]["quotes"]["overdue"] == 0
    assert summary["purposes"]["quotes"]["last_success"]
    assert inbox.messages == []


@pytest.mark.integration
def test_watch_alarms_on_a_purpose_without_recent_success(airflow_db, db, s3, storage, inbox, monkeypatch):
    """The last success as the API server tells it is covered above; here it is 49 hours old
    (other tests may have run this DAG moments ago)."""
    from retention import watch

    asked = []

    def last_success_end(dag_id, now):
        asked.append(dag_id)
        return now - dt.timedelta(hours=49)

    monkeypatch.setattr(watch, "last_success_end", last_success_end)
    dag_run = _run_watch(purposes=["job_applications"], overdue_days=3, stale_after_hours=48)
    assert task_states(dag_run) == {"watch": "failed", "delete_expired_exports": "success"}
    assert asked == ["retention_job_applications"]
    [message] = inbox.messages
    assert "job_applications: no_success: last success 49 h ago" in _text(message)


@pytest.mark.integration
def test_the_watch_of_every_purpose_alarms_when_the_housekeeping_stopped(
    airflow_db, db, s3, storage, inbox, monkeypatch
):
    """As scheduled (every purpose watched), the watch also asks for the housekeeping's last
    success: none on record is an alarm, the purposes' own runs being recent. Watching some
    purposes (a manual check) leaves the housekeeping out (asked above: the purpose only)."""
    from retention import watch
    from retention.policy import default_policy

    asked = []

    def last_success_end(dag_id, now):
        asked.append(dag_id)
        return None if dag_id == "retention_housekeeping" else now - dt.timedelta(hours=1)

    monkeypatch.setattr(watch, "last_success_end", last_success_end)
    dag_run = _run_watch(overdue_days=3, stale_after_hours=48)
    assert task_states(dag_run) == {"watch": "failed", "delete_expired_exports": "success"}
    assert asked == [f"retention_{p}" for p in default_policy().purposes] + ["retention_housekeeping"]
    [message] = inbox.messages
    body = _text(message)
    assert "housekeeping: no_success: no successful run on record" in body
    assert body.count("no_success") == 1, "the purposes' runs are recent"


def test_alarm_rules():
    from types import SimpleNamespace as NS

    from retention.alerts import alarms, open_retirement_alarms, stale_alarm

    now = dt.datetime(2026, 11, 29, 7, tzinfo=dt.UTC)
    fresh = NS(purpose="a", overdue=0, rules=[], waiting_past_end=[])
    late = NS(
        purpose="b",
        overdue=4,
        rules=[NS(rule="r1", overdue=3), NS(rule="r2", overdue=1), NS(rule="r3", overdue=0)],
        waiting_past_end=[],
    )
    found = alarms(
        [fresh, late, NS(purpose="c", overdue=0, rules=[], waiting_past_end=[])],
        {"a": now - dt.timedelta(hours=47), "b": now - dt.timedelta(hours=49), "c": None},
        now,
        overdue_days=3,
    )
    assert [str(a) for a in found] == [
        "b: overdue: 4 deletable records due for more than 3 days (r1=3, r2=1)",
        "b: no_success: last success 49 h ago (2026-11-27T06:00:00+00:00)",
        "c: no_success: no successful run on record",
    ]
    stale = dt.timedelta(hours=48)
    assert stale_alarm("housekeeping", now - dt.timedelta(hours=47), now, stale) is None
    assert str(stale_alarm("housekeeping", now - dt.timedelta(hours=49), now, stale)) == (
        "housekeeping: no_success: last success 49 h ago (2026-11-27T06:00:00+00:00)"
    )
    [left] = open_retirement_alarms(
        [
            {
                "purpose": "chat",
                "table": "chat_messages",
                "partition": "chat_messages_2026_03",
                "run_id": "r",
                "hours": 30,
            }
        ]
    )
    assert str(left).startswith("chat: open_retirement: partition chat_messages_2026_03 of chat_messages has been")


# A failing run of each kind of DAG, triggered without a logical date (REST `"logical_date":
# null`): Airflow leaves `logical_date`, `ds` and `ts` out of the context, and the e-mail must
# still go out, naming DAG, task, run and error class, with no personal data.
PERSONAL_VALUES = ("lea.dubois", "example.fr", "Camille", "Martin", "Dubois")


def _failing_purpose_run(db, monkeypatch):
    from retention.archive.engine import RetentionEngine

    def broken_plan(self, *args, **kwargs):
        raise RuntimeError("fault injected in the plan")

    f.quote(db, issued="2024-01-10")
    monkeypatch.setattr(RetentionEngine, "make_plan", broken_plan)
    expected = {"plan": "RuntimeError: fault injected in the plan", "report": "AirflowFailException: retention_quotes"}
    return run_dag("quotes", None), expected


def _failing_subject_request(db, monkeypatch):
    """A request whose id is already recorded for another subject: refused."""
    db.execute(
        "INSERT INTO retention.subject_requests (request_id, action, subject_kind, subject_ref, received_at,"
        " respond_by, state) VALUES ('DSR-ALERT-1', 'access', 'customer', '42', now(), now(), 'done')"
    )
    dag = load_dag("subject_requests")
    for task in dag.tasks:
        task.retries = 0
    conf = {
        "request_id": "DSR-ALERT-1",
        "action": "erasure",
        "subject_kind": "customer",
        "subject_id": 7,
        "preview": False,
    }
    expected = {"handle_request": "AirflowFailException (from SubjectRequestError): request "}
    return dag.test(logical_date=None, run_conf=conf), expected


def _failing_watch_run(db, monkeypatch):
    from retention.policy.periods import Period

    today = dt.datetime.now(PARIS).date()
    f.quote(db, issued=Period(months=12).latest_start(today) - dt.timedelta(days=20))
    dag = load_dag("watch")
    conf = {"purposes": ["quotes"], "overdue_days": 3, "stale_after_hours": 24 * 365 * 20}
    expected = {"watch": "AirflowFailException: "}
    return dag.test(logical_date=None, run_conf=conf), expected


@pytest.mark.integration
@pytest.mark.parametrize("failing_run", [_failing_purpose_run, _failing_subject_request, _failing_watch_run])
def test_failure_without_logical_date_emails(failing_run, airflow_db, db, s3, storage, inbox, monkeypatch):
    dag_run, expected = failing_run(db, monkeypatch)
    assert dag_run.logical_date is None and dag_run.state == "failed"
    assert {t for t, state in task_states(dag_run).items() if state == "failed"} == set(expected)
    assert [m["Subject"] for m in inbox.messages] == [
        f"[retention] FAILED {dag_run.dag_id}.{task} (run {dag_run.run_id})" for task in expected
    ], "one e-mail per failed task, none lost to the template"
    for message, (task, error) in zip(inbox.messages, expected.items(), strict=True):
        body = _text(message)
        assert f"<b>{dag_run.dag_id}</b>: task <b>{task}</b> failed" in body
        assert f"run: {dag_run.run_id}" in body
        assert "logical date: none (a manual run; it acts as of its start, " in body
        assert f"error: {error}" in body, body
        assert not [v for v in PERSONAL_VALUES if v in body + message["Subject"]], body


@pytest.mark.integration
def test_watch_and_retention_page_flag_a_future_run(airflow_db, db, s3, storage, inbox):
    """A run dated tomorrow, made the CLI's way (`airflow dags trigger` writes to the metadata
    database: no API in between) and set running, as the scheduler does when the slot is free:
    the watch fails and e-mails, the Retention page shows it."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunTriggeredByType
    from retention_ui.render import render_page
    from retention_ui.summary import summary

    from tests.dag_runs import sync_dags

    sync_dags()
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).replace(microsecond=0)
    run = trigger_dag("retention_quotes", logical_date=tomorrow, triggered_by=DagRunTriggeredByType.CLI)
    try:
        with create_session() as session:
            session.query(DagRun).filter(DagRun.id == run.id).update({"state": "running"})
        dag_run = _run_watch(purposes=["quotes"], overdue_days=3, stale_after_hours=24 * 365 * 20)
        assert task_states(dag_run) == {"watch": "failed", "delete_expired_exports": "success"}
        [message] = inbox.messages
        body = _text(message)
        assert f"quotes: future_run: run {run.run_id} has logical date {tomorrow.isoformat()}, in the future" in body
        assert "mark it failed" in body

        page = summary()
        assert [(r["dag_id"], r["run_id"], r["state"]) for r in page["future_runs"]] == [
            ("retention_quotes", run.run_id, "running")
        ]
        html = render_page(page)
        assert 'data-testid="future-runs"' in html and run.run_id in html
    finally:
        with create_session() as session:
            session.query(DagRun).filter(DagRun.id == run.id).delete()


@pytest.mark.integration
def test_watch_and_retention_page_flag_a_partition_left_between_its_table_and_the_archive(
    airflow_db, db, s3, storage, inbox
):
    """A run interrupted between a partition's detach and its drop leaves its record open
    (tests/test_partitions.py makes one for real; here the record alone, which is what the watch
    and the page read): one open for 7 hours is an alarm, one open for a minute (a run going on)
    is not."""
    from retention_ui.render import render_page
    from retention_ui.summary import summary

    now = dt.datetime.now(dt.UTC)
    left, going_on = (
        db.execute(
            "INSERT INTO retention.partition_retirements (run_id, logical_date, purpose, rule, table_name,"
            " partition_name, partition_bound, row_count, state, created_at)"
            " VALUES (%s, %s, 'quotes', 'unconverted_quotes', 'quotes', %s, 'FOR VALUES FROM (1) TO (2)', 3,"
            " 'detaching', %s) RETURNING id",
            (run_id, now, partition, now - age),
        ).fetchone()[0]
        for run_id, partition, age in (
            ("scheduled__crashed", "quotes_2019_01", dt.timedelta(hours=7)),
            ("scheduled__going-on", "quotes_2019_02", dt.timedelta(minutes=1)),
        )
    )
    try:
        dag_run = _run_watch(purposes=["quotes"], overdue_days=3, stale_after_hours=24 * 365 * 20)
        assert task_states(dag_run) == {"watch": "failed", "delete_expired_exports": "success"}
        body = _text(inbox.messages[0])
        assert "quotes: open_retirement: partition quotes_2019_01 of quotes has been in retirement for 7 h" in body
        assert "run scheduled__crashed" in body and "quotes_2019_02" not in body

        page = summary()
        assert [(r["partition"], r["run_id"]) for r in page["open_retirements"]] == [
            ("quotes_2019_01", "scheduled__crashed")
        ]
        html = render_page(page)
        assert 'data-testid="open-retirements"' in html and "quotes_2019_01 of quotes" in html
    finally:
        db.execute("DELETE FROM retention.partition_retirements WHERE id IN (%s, %s)", (left, going_on))


def _a_retirement_left_open_7_hours(db) -> int:
    """The record of a partition's retirement a crashed run left open 7 hours ago (the watch's
    open_retirement alarm); its id."""
    return db.execute(
        "INSERT INTO retention.partition_retirements (run_id, logical_date, purpose, rule, table_name,"
        " partition_name, partition_bound, row_count, state, created_at)"
        " VALUES ('scheduled__crashed', now(), 'quotes', 'unconverted_quotes', 'quotes', 'quotes_2019_01',"
        " 'FOR VALUES FROM (1) TO (2)', 3, 'detaching', now() - interval '7 hours') RETURNING id"
    ).fetchone()[0]


@pytest.mark.integration
def test_the_watch_reports_a_policy_the_database_refuses_and_still_sends_its_other_alarms(
    airflow_db, db, s3, storage, inbox
):
    """A legal hold naming a table renamed since refuses every count (Planner.load:
    check_holds_name_tables). The watch's count raised that PolicyError: the watch failed with it
    and sent none of its other alarms, here a partition left seven hours between its table and the
    archive (its rows in neither), for as long as the policy was refused (found by a review of who
    calls Planner.load). The refusal is now an alarm of its own, beside the others."""
    hold = f.legal_hold(db, "job_applications", f.job_application(db, last_contact="2024-01-01"))
    left = _a_retirement_left_open_7_hours(db)
    try:
        with f.table_renamed(db, "job_applications", "candidates"):
            dag_run = _run_watch(purposes=["quotes"], overdue_days=3, stale_after_hours=24 * 365 * 20)
        assert task_states(dag_run) == {"watch": "failed", "delete_expired_exports": "success"}
        body = _text(inbox.messages[0])
        assert "quotes: policy_refused: active legal holds name job_applications, no table of app" in body
        assert "quotes: open_retirement: partition quotes_2019_01 of quotes has been in retirement for 7 h" in body
    finally:
        db.rollback()
        db.execute("DELETE FROM retention.partition_retirements WHERE id = %s", (left,))
        db.execute("DELETE FROM retention.legal_holds WHERE id = %s", (hold,))
        db.commit()


@pytest.mark.integration
def test_the_watch_reports_a_clock_table_renamed_since_and_still_sends_its_other_alarms(
    airflow_db, db, s3, storage, inbox
):
    """customers (a clock table, and a parent of the hold coverage) renamed clients by a migration,
    the policy not following: every purpose is refused (policy_refused), and the watch's look at the
    archives past their end read app.customers (the coverage and the clocks' SQL): UndefinedTable
    failed the watch with it alone, its other alarms unsent, here a partition left seven hours
    between its table and the archive (found by a review of who calls Planner.load). That look now
    runs the purge's checks first: refused, it is reported as the counts are."""
    left = _a_retirement_left_open_7_hours(db)
    try:
        with f.table_renamed(db, "customers", "clients"):
            dag_run = _run_watch(overdue_days=3, stale_after_hours=24 * 365 * 20)
        assert task_states(dag_run) == {"watch": "failed", "delete_expired_exports": "success"}
        body = _text(inbox.messages[0])
        assert "quotes: policy_refused: legal_holds.covers.customers: prospects.customer_id" in body
        assert "quotes: open_retirement: partition quotes_2019_01 of quotes has been in retirement for 7 h" in body
    finally:
        db.rollback()
        db.execute("DELETE FROM retention.partition_retirements WHERE id = %s", (left,))
        db.commit()


@pytest.mark.integration
def test_watch_alarms_on_archive_objects_past_their_purge_date_none_held(
    airflow_db, db, s3, storage, inbox, monkeypatch
):
    """Archive objects stored past their purge date are kept on the safe side, and nobody was
    told: a purpose removed from the policy (no DAG purges its objects any more), a purge that
    keeps them for a decision (a period lengthened, a clock changed). The watch of every purpose
    alarms on those past `overdue_days`; not on one holding a held record, nor on one due since
    yesterday (its purpose's purge goes tonight)."""
    from retention import watch

    monkeypatch.setattr(watch, "last_success_end", lambda dag_id, now: now - dt.timedelta(hours=1))
    held = f.quote(db, issued="2020-01-10")
    f.legal_hold(db, "quotes", held)
    now = dt.datetime.now(dt.UTC)

    def archived(purpose: str, rule: str, ids: list[int], days_past: int) -> int:
        return db.execute(
            "INSERT INTO retention.archive_manifest (run_id, logical_date, purpose, rule, table_name, tier, bucket,"
            " object_key, state, purge_month, purge_after, row_count, record_ids, owner_ids)"
            " VALUES ('r', now(), %s, %s, %s, 'intermediate', %s, %s, 'committed', '2026-01', %s, %s, %s, '{}')"
            " RETURNING id",
            (
                purpose,
                rule,
                purpose,
                storage.archive_bucket,
                f"intermediate/{purpose}/{rule}/{ids[0]}.parquet",
                now - dt.timedelta(days=days_past),
                len(ids),
                ids,
            ),
        ).fetchone()[0]

    made = [
        archived("pet_photos", "old_photos", [1, 2], 40),  # a purpose the policy no longer names
        archived("quotes", "unconverted_quotes", [10**9], 40),  # past its date, no hold
        archived("quotes", "unconverted_quotes", [held], 400),  # held
        archived("quotes", "unconverted_quotes", [10**9 + 1], 1),  # due since yesterday
    ]
    db.commit()
    try:
        dag_run = _run_watch(overdue_days=3, stale_after_hours=48)
        assert task_states(dag_run) == {"watch": "failed", "delete_expired_exports": "success"}
        body = _text(inbox.messages[0])
        assert (
            "pet_photos: archive_past_end: 1 archive objects of rule old_photos stored more than 3 days past their "
            "purge date" in body
        )
        assert "the policy no longer names this rule" in body
        quotes = "quotes: archive_past_end: 1 archive objects of rule unconverted_quotes stored more than 3 days"
        assert quotes in body and "its purge keeps them" in body, "the held object, or the recent one, was counted"
        assert body.count("archive_past_end") == 2

        from retention_ui.render import render_page
        from retention_ui.summary import summary

        page = summary(overdue_days=3)
        assert [(a["purpose"], a["rule"], a["objects"], a["in_policy"]) for a in page["archives_past_end"]] == [
            ("pet_photos", "old_photos", 1, False),
            ("quotes", "unconverted_quotes", 1, True),
        ]
        html = render_page(page)
        assert 'data-testid="archives-past-end"' in html and "(rule no longer in the policy)" in html
    finally:
        db.execute("DELETE FROM retention.archive_manifest WHERE id = ANY(%s)", (made,))
        db.commit()


@pytest.mark.integration
def test_watch_alarms_on_a_record_waiting_past_its_end_without_a_decision_to_wait(airflow_db, db, s3, storage, inbox):
    """A former customer kept by a pending identity check (keep_parent_and_alert in the policy)."""
    from tests import factories_policy as fp

    customer = f.customer(db, ended="2020-01-10")
    fp.identity_document(db, customer_id=customer)
    dag_run = _run_watch(purposes=["prospects"], overdue_days=3, stale_after_hours=24 * 365 * 20)
    assert task_states(dag_run) == {"watch": "failed", "delete_expired_exports": "success"}
    [message] = inbox.messages
    body = _text(message)
    assert "prospects: waiting: 1 records waiting past their end for more than 3 days" in body
    assert "former_customers on identity_documents (keep_parent_and_alert): 1, oldest " in body
    assert "Camille" not in body and "example.fr" not in body
    assert customer in f.ids(db, "customers"), "the watch changes nothing"


@pytest.mark.integration
def test_a_run_not_finished_hours_after_it_was_queued_raises_airflows_deadline_alert(airflow_db, db, inbox):
    """A purpose's run queued (the CLI's way, as the scheduler queues a daily run) gets Airflow's
    deadline `run_deadline_hours` (the policy's) after it; past it, the scheduler's miss handling
    queues the callback and the executor's callback runner sends the late-run e-mail through the
    same notifier. The clock is moved, not waited for: the deadline is set to a minute ago."""
    import structlog
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.executors.workloads.callback import ExecuteCallback
    from airflow.models.callback import ExecutorCallback
    from airflow.models.dagrun import DagRun
    from airflow.models.deadline import Deadline
    from airflow.sdk.execution_time.callback_supervisor import execute_callback
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunTriggeredByType
    from retention.policy import default_policy

    from tests.dag_runs import sync_dags

    sync_dags()
    run = trigger_dag("retention_quotes", logical_date=None, triggered_by=DagRunTriggeredByType.CLI)
    try:
        with create_session() as session:
            dag_run = session.get(DagRun, run.id)
            [deadline] = session.query(Deadline).filter(Deadline.dagrun_id == run.id).all()
            hours = default_policy().alerts.run_deadline_hours
            assert deadline.deadline_time == dag_run.queued_at + dt.timedelta(hours=hours)
            assert not deadline.missed and inbox.messages == []
            deadline.deadline_time = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)  # hours later
        with create_session() as session:
            # The scheduler loop's handling of a deadline past (SchedulerJobRunner._execute's loop).
            for missed in session.query(Deadline).filter(Deadline.deadline_time < dt.datetime.now(dt.UTC)):
                missed.handle_miss(session)
            session.flush()
            [callback] = session.query(ExecutorCallback).filter(ExecutorCallback.state == "pending").all()
            workload = ExecuteCallback.make(callback=callback, dag_run=session.get(DagRun, run.id))
        # What the executor runs for the workload (BaseExecutor.run_workload -> supervise_callback).
        ok, error = execute_callback(
            workload.callback.data["path"],
            workload.callback.data["kwargs"],
            workload.dag_rel_path,
            None,
            structlog.get_logger(),
        )
        assert ok, error
        [message] = inbox.messages
        assert message["Subject"] == f"[retention] LATE retention_quotes (run {run.run_id}): not finished"
        assert inbox.recipients == [["dpo@insurer.test"]]
        body = _text(message)
        assert f"run {run.run_id} is not finished\n{hours:g} h after it was queued" in body
        assert "<b>queued</b>" in body and "logical date: none (a manual run)" in body
        assert "Required Actions" in body
    finally:
        with create_session() as session:
            session.query(DagRun).filter(DagRun.id == run.id).delete()


def test_a_run_finished_before_its_deadline_sends_no_late_email(inbox):
    """The scheduler drops the deadline of a run that succeeded in time; one that failed keeps it,
    and its callback says nothing (the failure e-mail went)."""
    from retention.alerts import notify_late_run

    notify_late_run(context={"dag_run": {"dag_id": "retention_quotes", "state": "failed", "end_date": "2025-03-01"}})
    assert inbox.messages == []


@pytest.mark.integration
def test_the_watch_does_not_alarm_on_archive_objects_their_purge_keeps_because_their_clock_runs_again(
    airflow_db, db, s3, storage, inbox, monkeypatch
):
    """A claims' copy is dated from its contract's end; the contract set back to running (its end
    cleared) keeps the copy past that date, rightly: the purge keeps it (kept_clock_not_due) until
    the contract ends again and its periods pass. Nothing to decide, nothing to re-date: the
    watch does not call it stored past its end (found by a review: it alarmed every day, 'its
    purge keeps them ... re-date them'). A copy whose contract is gone still does."""
    from retention import watch

    monkeypatch.setattr(watch, "last_success_end", lambda dag_id, now: now - dt.timedelta(hours=1))
    running = f.contract(db, ended=None)
    now = dt.datetime.now(dt.UTC)

    def archived(claim_id: int, contract_id: int) -> int:
        return db.execute(
            "INSERT INTO retention.archive_manifest (run_id, logical_date, purpose, rule, table_name, tier, bucket,"
            " object_key, state, purge_month, purge_after, row_count, record_ids, owner_ids, clock)"
            " VALUES ('r', now(), 'contracts', 'claims', 'claims', 'probative', %s, %s, 'committed', '2026-01', %s,"
            " 1, %s, %s::jsonb, 'contracts.ended_at') RETURNING id",
            (
                storage.archive_bucket,
                f"probative/contracts/claims/{claim_id}.parquet",
                now - dt.timedelta(days=40),
                [claim_id],
                json.dumps({"contracts": [contract_id]}),
            ),
        ).fetchone()[0]

    made = [archived(10**9, running), archived(10**9 + 1, 10**9 + 2)]  # the second one's contract is gone
    db.commit()
    try:
        _run_watch(purposes=["contracts"], overdue_days=3, stale_after_hours=24 * 365 * 20)
        body = "".join(_text(m) for m in inbox.messages)
        assert "contracts: archive_past_end: 1 archive objects of rule claims stored more than 3 days past" in body, (
            "the copy whose contract is running again was counted (or the other one was not)"
        )

        from retention_ui.summary import summary

        page = summary(overdue_days=3)
        assert [(a["purpose"], a["rule"], a["objects"]) for a in page["archives_past_end"]] == [
            ("contracts", "claims", 1)
        ]
    finally:
        db.execute("DELETE FROM retention.archive_manifest WHERE id = ANY(%s)", (made,))
        db.commit()


@pytest.mark.integration
def test_the_watch_does_not_say_no_purge_decides_the_objects_of_a_rule_renamed_in_a_purpose_still_purged(
    airflow_db, db, s3, storage, inbox, monkeypatch
):
    """A rule renamed in a purpose the policy still names (unconverted_quotes become stale_quotes,
    say, kept longer): its objects' purge reads their rule as unknown and keeps them past their
    recorded date (kept_policy_longer), for someone to re-date. The alarm said 'no purge decides
    them: ... or purge them by hand', false, and the way to delete records the renamed rule now
    keeps (found by a review). Of a purpose the policy no longer names, it still says so."""
    from retention import watch

    monkeypatch.setattr(watch, "last_success_end", lambda dag_id, now: now - dt.timedelta(hours=1))
    now = dt.datetime.now(dt.UTC)
    made = [
        db.execute(
            "INSERT INTO retention.archive_manifest (run_id, logical_date, purpose, rule, table_name, tier, bucket,"
            " object_key, state, purge_month, purge_after, row_count, record_ids, owner_ids, gone_after)"
            " VALUES ('r', now(), %s, %s, %s, 'intermediate', %s, %s, 'committed', '2026-01', %s, 1, %s, '{}',"
            " '12 months') RETURNING id",
            (purpose, rule, table, storage.archive_bucket, f"intermediate/{purpose}/{rule}/1.parquet", when, [10**9]),
        ).fetchone()[0]
        for purpose, rule, table, when in (
            ("quotes", "renamed_quotes", "quotes", now - dt.timedelta(days=40)),
            ("pet_photos", "old_photos", "pet_photos", now - dt.timedelta(days=40)),
        )
    ]
    db.commit()
    try:
        _run_watch(overdue_days=3, stale_after_hours=24 * 365 * 20)
        body = _text(inbox.messages[0])

        def alarm_of(rule: str) -> str:  # up to the next alarm (the message joins them on one line)
            start = body.index(f"archive objects of rule {rule} ")
            ends = [i for i in (body.find("archive_past_end", start), body.find("</li>", start)) if i >= 0]
            return body[start : min(ends, default=len(body))]

        renamed, removed = alarm_of("renamed_quotes"), alarm_of("old_photos")
        assert "quotes: archive_past_end: 1 archive objects of rule renamed_quotes" in body
        assert "no purge decides them" not in renamed and "by hand" not in renamed, renamed
        assert "re-date them" in renamed
        assert "no purge decides them" in removed and "by hand" in removed, removed
    finally:
        db.execute("DELETE FROM retention.archive_manifest WHERE id = ANY(%s)", (made,))
        db.commit()
