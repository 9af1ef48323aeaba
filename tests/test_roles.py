"""Roles that can do only their job (include/sql/schema/050_roles.sql, docs/audit.md "Roles"):
each role's login user is refused what is not its job, with PostgreSQL's "permission denied"
naming the object; a purpose's DAG, a subject request and the Retention page run as their roles
(the test session's Airflow connections are the roles' users: tests/conftest.py)."""

from __future__ import annotations

import psycopg
import pytest

from tests import factories as f
from tests import scenarios
from tests.dag_runs import run_dag, task_states

pytestmark = pytest.mark.integration

# (role, statement, what the refusal names). Run on a world with one row in each table used.
REFUSED = [
    # The engine deletes what the policy lets go and audits it: never changes nor removes an audit row.
    ("retention_engine", "UPDATE retention.audit_log SET record_count = 0", "permission denied for table audit_log"),
    ("retention_engine", "DELETE FROM retention.audit_log", "permission denied for table audit_log"),
    ("retention_engine", "TRUNCATE retention.audit_log", "permission denied for table audit_log"),
    ("retention_engine", "UPDATE retention.audit_chain SET row_hash = ''", "permission denied for table audit_chain"),
    ("retention_engine", "DELETE FROM retention.audit_chain", "permission denied for table audit_chain"),
    ("retention_engine", "SELECT retention.prune_audit(now())", "permission denied for function prune_audit"),
    ("retention_engine", "SELECT retention.forget_audit_ids(now())", "permission denied for function forget_audit_ids"),
    (
        "retention_housekeeping",
        "SELECT retention.forget_audit_ids(now())",
        "permission denied for function forget_audit_ids",
    ),
    (
        "retention_engine",
        "UPDATE retention.legal_holds SET released_at = now()",
        "permission denied for table legal_holds",
    ),
    ("retention_engine", "DELETE FROM retention.legal_holds", "permission denied for table legal_holds"),
    ("retention_engine", "DELETE FROM retention.archive_manifest", "permission denied for table archive_manifest"),
    (
        "retention_engine",
        "UPDATE retention.archive_manifest SET purge_after = now()",
        "permission denied for table archive_manifest",
    ),
    (
        "retention_engine",
        "SELECT email FROM retention.subject_request_inbox",
        "permission denied for table subject_request_inbox",
    ),
    ("retention_engine", "UPDATE app.quotes SET issued_at = '2000-01-01'", "permission denied for table quotes"),
    # The lock privilege (UPDATE on id) is refused as a change.
    ("retention_engine", "UPDATE app.quotes SET id = id", "permission denied for table quotes"),
    ("retention_engine", "INSERT INTO app.quotes (species) VALUES ('cat')", "permission denied for table quotes"),
    ("retention_engine", "LOCK TABLE retention.legal_holds IN SHARE MODE", "permission denied for table legal_holds"),
    # The subject requests: an erasure's rows and evidence, no more.
    ("retention_rights", "UPDATE retention.audit_log SET record_count = 0", "permission denied for table audit_log"),
    ("retention_rights", "DELETE FROM retention.audit_log", "permission denied for table audit_log"),
    ("retention_rights", "DELETE FROM retention.subject_requests", "permission denied for table subject_requests"),
    (
        "retention_rights",
        "UPDATE retention.subject_requests SET subject_ref = 'x'",
        "permission denied for table subject_requests",
    ),
    (
        "retention_rights",
        "UPDATE retention.legal_holds SET released_at = now()",
        "permission denied for table legal_holds",
    ),
    ("retention_rights", "DELETE FROM retention.purge_intents", "permission denied for table purge_intents"),
    ("retention_rights", "UPDATE app.customers SET email = 'x'", "permission denied for table customers"),
    ("retention_rights", "SELECT retention.prune_audit(now())", "permission denied for function prune_audit"),
    # The page reads what it shows, nothing else.
    (
        "retention_reader",
        "INSERT INTO retention.legal_holds (table_name, record_id, reason) VALUES ('quotes', 1, 'x')",
        "permission denied for table legal_holds",
    ),
    (
        "retention_reader",
        "UPDATE retention.legal_holds SET released_at = now()",
        "permission denied for table legal_holds",
    ),
    ("retention_reader", "DELETE FROM retention.audit_log", "permission denied for table audit_log"),
    ("retention_reader", "DELETE FROM app.quotes", "permission denied for table quotes"),
    ("retention_reader", "SELECT email FROM app.customers", "permission denied for table customers"),
    ("retention_reader", "SELECT * FROM app.quotes", "permission denied for table quotes"),
    (
        "retention_reader",
        "SELECT email FROM retention.subject_request_inbox",
        "permission denied for table subject_request_inbox",
    ),
    ("retention_reader", "SELECT retention.lock_legal_holds()", "permission denied for function lock_legal_holds"),
    ("retention_reader", "DELETE FROM retention.status_counts", "permission denied for table status_counts"),
    # The page's recount writes its stored counts, nothing else.
    ("retention_counter", "DELETE FROM retention.status_counts", "permission denied for table status_counts"),
    (
        "retention_counter",
        "UPDATE retention.legal_holds SET released_at = now()",
        "permission denied for table legal_holds",
    ),
    ("retention_counter", "DELETE FROM app.quotes", "permission denied for table quotes"),
    ("retention_counter", "SELECT email FROM app.customers", "permission denied for table customers"),
    (
        "retention_counter",
        "INSERT INTO retention.approvals (kind) VALUES ('deletion')",
        "permission denied for table approvals",
    ),
    # Housekeeping removes the audit's rows through its functions only.
    ("retention_housekeeping", "DELETE FROM retention.audit_log", "permission denied for table audit_log"),
    (
        "retention_housekeeping",
        "UPDATE retention.audit_log SET record_ids = NULL",
        "permission denied for table audit_log",
    ),
    ("retention_housekeeping", "DELETE FROM retention.audit_chain", "permission denied for table audit_chain"),
    (
        "retention_housekeeping",
        "UPDATE retention.audit_checkpoints SET seq = 0",
        "permission denied for table audit_checkpoints",
    ),
    ("retention_housekeeping", "DELETE FROM app.quotes", "permission denied for table quotes"),
]


@pytest.fixture
def one_of_each(db):
    contract = f.contract(db)
    f.quote(db, issued="2020-01-01", contract_id=contract)
    f.legal_hold(db, "quotes", 1)
    db.execute(
        "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action, record_count)"
        " VALUES ('manual__roles', now(), 'quotes', 'unconverted_quotes', 'quotes', 'deleted', 1)"
    )
    db.execute(
        "INSERT INTO retention.subject_requests (request_id, action, subject_kind, subject_ref, received_at,"
        " respond_by, state) VALUES ('req-roles', 'access', 'customer', 'customers:1', now(), now(), 'running')"
    )


@pytest.mark.parametrize(("role", "statement", "refusal"), REFUSED, ids=[f"{r}: {s[:60]}" for r, s, _ in REFUSED])
def test_each_role_is_refused_what_is_not_its_job(role, statement, refusal, one_of_each, role_dsn):
    with psycopg.connect(role_dsn(role)) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
            conn.execute(statement)
    assert str(refused.value).startswith(refusal), str(refused.value)


def test_the_page_connection_cannot_leave_read_only(one_of_each, role_dsn):
    """The page sets its session read-only; its own code could unset it: the role cannot write anyway."""
    with psycopg.connect(role_dsn("retention_reader"), autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table legal_holds"):
            conn.execute("UPDATE retention.legal_holds SET released_at = now()")
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table audit_log"):
            conn.execute("DELETE FROM retention.audit_log")
        for role in ("retention_engine", "retention_rights", "retention_housekeeping", "postgres"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f'permission denied to set role "{role}"'):
                conn.execute(f"SET ROLE {role}")


def test_what_each_role_may_do_it_does(one_of_each, role_dsn):
    """The other side: the grants the jobs need work (a row lock, a delete, the evidence)."""
    with psycopg.connect(role_dsn("retention_engine")) as conn:
        conn.execute("SELECT retention.lock_legal_holds()")
        assert conn.execute("SELECT id FROM app.quotes FOR UPDATE SKIP LOCKED").fetchall()
        assert conn.execute("SELECT id FROM app.contracts FOR SHARE").fetchall()
        conn.execute(
            "INSERT INTO retention.audit_log (run_id, logical_date, purpose, rule, table_name, action, record_count)"
            " VALUES ('manual__roles', now(), 'quotes', 'unconverted_quotes', 'quotes', 'deleted', 0)"
        )
        conn.rollback()
    with psycopg.connect(role_dsn("retention_rights")) as conn:
        conn.execute("UPDATE retention.subject_requests SET reports = '[]' WHERE request_id = 'req-roles'")
        conn.rollback()
    with psycopg.connect(role_dsn("retention_reader")) as conn:
        assert conn.execute("SELECT count(*) FROM retention.audit_log").fetchone()[0] == 1
        assert conn.execute("SELECT id, issued_at FROM app.quotes").fetchall()
    with psycopg.connect(role_dsn("retention_housekeeping")) as conn:
        assert (
            conn.execute("SELECT retention.forget_audit_ids_past_archive(now() - interval '30 days')").fetchone()[0]
            == 0
        )
    with psycopg.connect(role_dsn("retention_counter")) as conn:
        assert conn.execute("SELECT id, issued_at FROM app.quotes").fetchall()
        conn.execute(
            "INSERT INTO retention.status_counts (overdue_days, purpose, counted_at, valid_until, marker, policy_sha256,"
            " counted_by, took_ms, status) VALUES (3, 'quotes', now(), now(), '{}', 'x', 'test', 1, '{}')"
            " ON CONFLICT (overdue_days, purpose) DO UPDATE SET took_ms = excluded.took_ms"
        )
        conn.rollback()


def test_a_purpose_dag_and_a_subject_request_run_as_their_roles(airflow_db, db, s3, storage, role_dsn):
    from retention.connections import READER_CONN_ID, RIGHTS_CONN_ID, SOURCE_CONN_ID
    from retention.tasks import source_dsn
    from retention_ui.render import render_page
    from retention_ui.source import source_dsn as page_dsn
    from retention_ui.summary import summary as page_summary

    for conn_id, user in (
        (SOURCE_CONN_ID, "retention_engine_user"),
        (RIGHTS_CONN_ID, "retention_rights_user"),
        (READER_CONN_ID, "retention_reader_user"),
    ):
        assert f"user={user}" in source_dsn(conn_id)

    scenario = scenarios.quotes(db, s3, storage)
    states = task_states(run_dag("quotes", scenario.logical_date, batch_size=2))
    assert set(states.values()) == {"success"}, states
    deleted = db.execute("SELECT count(*) FROM retention.audit_log WHERE action = 'archived_and_deleted'").fetchone()
    assert deleted[0] > 0

    candidate = f.job_application(db, last_contact="2024-02-01")
    access = run_subject_request(
        {
            "request_id": "req-access-as-rights",
            "action": "access",
            "subject_kind": "candidate",
            "subject_id": candidate,
            "preview": False,
        }
    )
    assert set(task_states(access).values()) == {"success"}, task_states(access)
    request = run_subject_request(
        {
            "request_id": "req-as-rights",
            "action": "erasure",
            "subject_kind": "candidate",
            "subject_id": candidate,
            "preview": False,
        }
    )
    assert set(task_states(request).values()) == {"success"}, task_states(request)
    assert db.execute("SELECT state FROM retention.subject_requests WHERE request_id = 'req-as-rights'").fetchone() == (
        "done",
    )
    assert candidate not in f.ids(db, "job_applications")  # deleted as retention_rights
    # The erasure deleted the access's export too, as retention_rights (its grants).
    assert db.execute(
        "SELECT outcome FROM retention.access_exports WHERE request_id = 'req-access-as-rights'"
    ).fetchall() == [("deleted",)]

    assert "user=retention_reader_user" in page_dsn()
    summary = page_summary()
    assert {p["purpose"] for p in summary["purposes"]} >= {"quotes"}

    from retention import audit

    with psycopg.connect(role_dsn("retention_housekeeping")) as conn:
        result = audit.verify(conn)
        assert result.intact and result.chains["subject_requests"].links == 2, result.message
        audit.record_verification(conn, result)
    # The page, as retention_reader, shows the last verification.
    shown = page_summary()["audit_verification"]
    assert shown["intact"] and shown["message"].startswith("intact: audit_log")
    assert "Last verified" in render_page(page_summary())


def run_subject_request(conf: dict):
    import importlib.util

    from tests.dag_runs import DAGS

    spec = importlib.util.spec_from_file_location("dag_subject_requests_roles", DAGS / "retention_subject_requests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for task in module.dag.tasks:
        task.retries = 0
    return module.dag.test(run_conf=conf)


def test_a_file_a_table_the_engine_may_not_read_names_is_kept(db, s3, storage, policy, role_dsn, source_dsn):
    """A table outside the policy names the same CV as an unsuccessful job application. The
    engine's role could not see that column (information_schema lists only what a role may read),
    so the CV went with the application (found by a review). Until `make schema` grants it the
    column, the disposal stops and keeps the file; then the file is kept as shared."""
    from retention.archive.engine import RetentionEngine
    from retention.archive.run import RunContext
    from retention.archive.store import ArchiveStore
    from retention.roles import grant_statements

    shared = "cv/manon-petit.pdf"
    f.put_document(s3, storage.documents_bucket, shared)
    db.execute("CREATE TABLE app.employee_files (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, cv_key text)")
    try:
        db.execute("INSERT INTO app.employee_files (cv_key) VALUES (%s)", (shared,))  # hired later: the CV kept
        f.job_application(db, last_contact="2020-01-01", cv_key=shared)  # the first, unsuccessful application
        db.commit()

        def engine() -> RetentionEngine:
            return RetentionEngine(
                policy.with_mode("enforce"), "job_applications", role_dsn("retention_engine"), ArchiveStore(s3, storage)
            )

        with pytest.raises(Exception, match=r"may not read the file keys of app\.employee_files\.cv_key"):
            engine().archive_and_delete(RunContext("job_applications", "r1", f.midnight("2025-01-01")))
        s3.head_object(Bucket=storage.documents_bucket, Key=shared)  # still there

        for statement in grant_statements(db, policy):
            db.execute(statement)
        db.commit()
        engine().archive_and_delete(RunContext("job_applications", "r2", f.midnight("2025-01-01")))
        s3.head_object(Bucket=storage.documents_bucket, Key=shared)
        outcome = db.execute("SELECT outcome FROM retention.document_disposals WHERE source_key = %s", (shared,))
        assert outcome.fetchall() == [("kept_shared",)]
    finally:
        db.execute("DROP TABLE app.employee_files")
        db.commit()


def test_the_rights_role_may_add_owners_to_an_archive_object_never_remove_one(db, role_dsn):
    """An erasure names a held subject's records among an object's owners (a hold on them then
    keeps it at every later check); removing one would let a purge delete a held object."""
    manifest = db.execute(
        "INSERT INTO retention.archive_manifest (run_id, logical_date, purpose, rule, table_name, tier, bucket,"
        " object_key, state, purge_month, purge_after, row_count, record_ids, committed_at, owner_ids)"
        " VALUES ('manual__roles', now(), 'quotes', 'unconverted_quotes', 'quotes', 'intermediate', 'b', 'k',"
        " 'committed', '2030-01', '2030-01-10', 1, '{1}', now(), '{\"prospects\": [7]}') RETURNING id"
    ).fetchone()[0]
    with psycopg.connect(role_dsn("retention_rights")) as conn:
        conn.execute(
            'UPDATE retention.archive_manifest SET owner_ids = \'{"prospects": [7], "customers": [3]}\' WHERE id = %s',
            (manifest,),
        )
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not remove owners"):
            conn.execute(
                "UPDATE retention.archive_manifest SET owner_ids = '{\"customers\": [3]}' WHERE id = %s", (manifest,)
            )
    (owners,) = db.execute("SELECT owner_ids FROM retention.archive_manifest WHERE id = %s", (manifest,)).fetchone()
    assert owners == {"prospects": [7], "customers": [3]}


def test_the_rights_role_may_not_record_owners_of_an_object_whose_owners_are_unknown(db, role_dsn):
    """An object archived before owners were recorded (owner_ids NULL) is kept by every purge
    (``object_held``: whose rows it holds is unknown) until the backfill reads them from its rows.
    The rights role setting them (to ``{}``, or to a subject's records alone) would make the purge
    test only those, and delete an object a hold on a record of its rows keeps."""
    manifest = db.execute(
        "INSERT INTO retention.archive_manifest (run_id, logical_date, purpose, rule, table_name, tier, bucket,"
        " object_key, state, purge_month, purge_after, row_count, record_ids, committed_at, owner_ids)"
        " VALUES ('manual__roles', now(), 'quotes', 'unconverted_quotes', 'quotes', 'intermediate', 'b', 'k2',"
        " 'committed', '2030-01', '2030-01-10', 1, '{1}', now(), NULL) RETURNING id"
    ).fetchone()[0]
    with psycopg.connect(role_dsn("retention_rights")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not remove owners"):
            conn.execute("UPDATE retention.archive_manifest SET owner_ids = '{}' WHERE id = %s", (manifest,))
    (owners,) = db.execute("SELECT owner_ids FROM retention.archive_manifest WHERE id = %s", (manifest,)).fetchone()
    assert owners is None


def test_the_engine_may_read_a_table_referring_to_one_partition_of_a_managed_table(db, policy):
    """A key into one partition of a managed table is a key into the table (the planner makes its
    rows wait for the children, retention.planner.REFERRED_TABLE): the engine's role must read
    the child's key, or every batch of the table stops on the permission (found by a review)."""
    from retention.roles import grant_statements

    from tests.test_partitions import monthly_partitioned

    with monthly_partitioned(db, chat_messages="transmitted_at"):
        db.execute("ALTER TABLE app.chat_messages_2026_03 ADD UNIQUE (id)")
        db.execute(
            "CREATE TABLE app.march_notes (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
            " message_id bigint REFERENCES app.chat_messages_2026_03 (id) ON DELETE CASCADE, note text)"
        )
        try:
            granted = [s for s in grant_statements(db, policy) if "march_notes" in s]
            assert any("message_id" in s and "retention_engine" in s for s in granted), granted
        finally:
            db.execute("DROP TABLE app.march_notes")
