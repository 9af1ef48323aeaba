"""Data-subject requests without personal data in Airflow's own records (issue 18, item 10).

A request by e-mail is recorded in the project's table (retention.subject_request_inbox) through
the Retention page's form or `python -m retention.rights.requests submit`, and its run is
triggered with the request id alone. After a request by e-mail, nothing of the address is left
in Airflow's metadata database (every table, as text: run conf, XCom, rendered fields, the REST
audit log...) nor in its task log files; the inbox keeps the address only until the request is
done. Airflow's own api-server app (SimpleAuthManager) is built in-process with the plugin."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests import factories as f
from tests.dag_runs import task_states, xcoms
from tests.test_subject_rights import D, archive

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "retention_subject_requests"


@pytest.fixture(scope="module")
def api(airflow_db, tmp_path_factory):
    """Airflow's api-server app with the plugins folder loaded; an admin (may trigger DAGs) and a
    viewer (may not); the DAGs synced to the metadata database, as the dag-processor does."""
    home = tmp_path_factory.mktemp("api")
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": "admin-pw", "viewer": "viewer-pw"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(
            "AIRFLOW__CORE__AUTH_MANAGER",
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        )
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,viewer:viewer")
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(passwords))
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(64))
        mp.setenv("AIRFLOW__API__SECRET_KEY", secrets.token_urlsafe(32))
        from airflow.api_fastapi.app import create_app, get_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
        from airflow.dag_processing.bundles.manager import DagBundlesManager
        from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
        from fastapi.testclient import TestClient

        manager = DagBundlesManager()
        manager.sync_bundles_to_db()
        for bundle in manager.get_all_dag_bundles():
            bundle.initialize()
            sync_bag_to_db(
                BundleDagBag(bundle.path, bundle_path=bundle.path, bundle_name=bundle.name), bundle.name, None
            )
        client = TestClient(create_app("core"), base_url="http://127.0.0.1")
        auth = get_auth_manager()
        tokens = {r: auth.generate_jwt(SimpleAuthManagerUser(username=r, role=r)) for r in ("admin", "viewer")}
        yield client, tokens


def _headers(api, role: str) -> dict:
    return {"Authorization": f"Bearer {api[1][role]}"}


def _form_token(api, role: str = "admin") -> str:
    page = api[0].get("/retention/", headers=_headers(api, role))
    assert page.status_code == 200, page.text
    return re.search(r'name="csrf_token" value="([0-9a-f]{64})"', page.text).group(1)


def _post_form(api, role: str = "admin", **fields):
    return api[0].post("/retention/subject-requests", data=fields, headers=_headers(api, role))


def metadata_hits(needle: str) -> dict[str, int]:
    """Rows of Airflow's metadata database holding ``needle`` (case ignored), per table."""
    from airflow.utils.session import create_session
    from sqlalchemy import inspect, text

    hits = {}
    with create_session() as session:
        for table in inspect(session.get_bind()).get_table_names():
            n = session.execute(
                text(f'SELECT count(*) FROM "{table}" AS t WHERE strpos(lower(t::text), :needle) > 0'),
                {"needle": needle.lower()},
            ).scalar()
            if n:
                hits[table] = n
    return hits


def log_file_hits(needle: str) -> list[str]:
    folder = Path(os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"])
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    return [str(p) for p in files if needle.lower() in p.read_text(errors="replace").lower()]


def run_conf(dag_run_id: str) -> dict:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(DagRun).filter(DagRun.dag_id == DAG_ID, DagRun.run_id == dag_run_id).one().conf


def execute(conf: dict):
    """Run the requests DAG as its worker would for a run with this conf (dag.test, at a logical
    date of its own so that the triggered run stays in the metadata database as it was)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dag_subject_requests_inbox", REPO_ROOT / "dags" / f"{DAG_ID}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for task in module.dag.tasks:
        task.retries = 0
    return module.dag.test(logical_date=D, run_conf=conf)


def inbox_row(db, request_id: str) -> dict | None:
    row = db.execute(
        "SELECT to_jsonb(i) FROM retention.subject_request_inbox AS i WHERE request_id = %s", (request_id,)
    ).fetchone()
    return row[0] if row else None


def a_person(db, s3, storage, policy, source_dsn, address: str) -> dict:
    """A customer with that address, and a quote by the same address archived without them."""
    customer = f.customer(db, email=address)
    quote = f.quote(db, issued="2023-01-10", email=address.upper())
    f.quote(db, issued="2023-01-12")  # someone else's, in the same archive object
    archive(db, s3, storage, policy, source_dsn, purposes=("quotes",))
    return {"customer": customer, "quote": quote}


def test_a_request_by_email_through_the_form_leaves_no_address_in_airflow(
    api, db, s3, storage, policy, source_dsn, capfd
):
    address = f"form.{secrets.token_hex(4)}@example.org"
    who = a_person(db, s3, storage, policy, source_dsn, address)
    answer = _post_form(
        api,
        csrf_token=_form_token(api),
        request_id="DSR-form-1",
        action="access",
        subject_kind="email",
        subject=address,
        received_on="2024-06-03",
        preview="off",
    )
    assert answer.status_code == 200, answer.text
    assert "DSR-form-1" in answer.text and address not in answer.text
    recorded = inbox_row(db, "DSR-form-1")
    assert recorded["email"] == address and recorded["submitted_by"] == "admin"
    run_id = re.search(r'data-testid="recorded".*?>(manual__[^<]+)</a>', answer.text).group(1)
    conf = run_conf(run_id)
    assert conf == {"request_id": "DSR-form-1", "preview": False}, "the run gets the request id alone"

    dag_run = execute(conf)
    assert set(task_states(dag_run).values()) == {"success"}
    report = xcoms(dag_run)["handle_request"]
    assert report["found"]["live"] == {"customers": 1} and report["found"]["intermediate"] == {"quotes": 1}
    assert report["subject"]["ref"].startswith("hmac-sha256:")
    # done: the inbox keeps the keyed hash, not the address
    cleared = inbox_row(db, "DSR-form-1")
    assert cleared["email"] is None and cleared["subject_ref"] == report["subject"]["ref"]
    assert cleared["identifiers_cleared_at"]
    assert who["quote"] not in f.ids(db, "quotes")  # archived, found through the archive only

    for needle in (address, address.split("@")[0]):
        assert metadata_hits(needle) == {}, f"{needle!r} in Airflow's metadata database"
        assert log_file_hits(needle) == []
    assert address not in capfd.readouterr().out.lower()


def test_the_cli_then_the_rest_trigger_with_the_request_id_alone(api, db, s3, storage, policy, source_dsn):
    address = f"cli.{secrets.token_hex(4)}@example.org"
    a_person(db, s3, storage, policy, source_dsn, address)
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'plugins'}:{REPO_ROOT}"}
    submitted = subprocess.run(
        [sys.executable, "-m", "retention.rights.requests", "submit", "--dsn", source_dsn, "--request-id", "DSR-cli-1"]
        + ["--action", "erasure", "--email", "-", "--received-on", "2024-06-03", "--submitted-by", "dpo"],
        input=f"  {address.upper()}\n",
        capture_output=True,
        text=True,
        env=env,
    )
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == "DSR-cli-1" and '"request_id": "DSR-cli-1"' in submitted.stderr
    assert inbox_row(db, "DSR-cli-1")["email"] == address  # normalised

    triggered = api[0].post(
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        json={"logical_date": None, "conf": {"request_id": "DSR-cli-1", "preview": False}},
        headers=_headers(api, "admin"),
    )
    assert triggered.status_code == 200, triggered.text
    dag_run = execute(run_conf(triggered.json()["dag_run_id"]))
    report = xcoms(dag_run)["handle_request"]
    assert report["action"] == "erasure" and report["erased"]["intermediate"] == {"quotes": 1}
    assert inbox_row(db, "DSR-cli-1")["email"] is None
    assert metadata_hits(address) == {} and log_file_hits(address) == []

    # the same id with another subject, or once finished: refused, nothing recorded
    again = subprocess.run(
        [sys.executable, "-m", "retention.rights.requests", "submit", "--dsn", source_dsn, "--request-id", "DSR-cli-1"]
        + ["--action", "erasure", "--customer", "1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert again.returncode != 0 and "refused" in again.stderr


def test_an_address_in_a_runs_conf_is_refused_before_airflow_records_it(api, db):
    address = f"rest.{secrets.token_hex(4)}@example.org"
    for conf in (
        {"request_id": "DSR-rest-1", "action": "access", "subject_kind": "email", "email": address},
        {"request_id": "DSR-rest-1", "action": "access", "subject_kind": "customer", "subject_id": 1, "note": address},
    ):
        refused = api[0].post(
            f"/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf}, headers=_headers(api, "admin")
        )
        assert refused.status_code == 400 and "Retention page" in refused.json()["detail"]
    backfill = api[0].post(
        "/api/v2/backfills",
        json={"dag_id": DAG_ID, "from_date": "2024-01-01T00:00:00Z", "to_date": "2024-01-02T00:00:00Z"}
        | {"dag_run_conf": {"email": address}},
        headers=_headers(api, "admin"),
    )
    assert backfill.status_code == 400
    assert metadata_hits(address) == {}, "not in a run's conf, nor in the REST audit log"
    # a request by id still goes through params (ids are not refused)
    by_id = api[0].post(
        f"/api/v2/dags/{DAG_ID}/dagRuns",
        json={
            "logical_date": None,
            "conf": {"request_id": "DSR-rest-2", "action": "access", "subject_kind": "customer"},
        },
        headers=_headers(api, "admin"),
    )
    assert by_id.status_code == 200, by_id.text


def test_an_address_that_reached_a_runs_conf_anyway_fails_the_run(airflow_db, db):
    """`airflow dags trigger` writes to the database without the api-server: the task refuses, pointing
    to the form, and nothing is read or written in the project's tables."""
    dag_run = execute({"request_id": "DSR-cli-conf", "email": "x@y.fr"})  # no `email` param: not validated
    assert task_states(dag_run)["handle_request"] == "failed"
    assert "dag_run" in metadata_hits("x@y.fr"), "the scan sees a run's conf (why the api-server refuses it first)"
    assert db.execute("SELECT count(*) FROM retention.subject_requests").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM retention.subject_request_inbox").fetchone()[0] == 0


def test_only_a_user_who_may_trigger_the_dag_can_submit_and_only_from_the_page(api, db):
    fields = {"request_id": "DSR-no", "action": "access", "subject_kind": "customer", "subject": "1"}
    assert _post_form(api, "viewer", csrf_token=_form_token(api, "viewer"), **fields).status_code == 403
    assert api[0].post("/retention/subject-requests", data=fields).status_code == 401
    assert _post_form(api, "admin", **fields).status_code == 403, "no token: a cross-site form"
    assert _post_form(api, "admin", csrf_token=_form_token(api, "viewer"), **fields).status_code == 403
    cross_site = api[0].post(
        "/retention/subject-requests",
        data={**fields, "csrf_token": _form_token(api)},
        headers={**_headers(api, "admin"), "Sec-Fetch-Site": "cross-site"},
    )
    assert cross_site.status_code == 403
    refused = _post_form(api, csrf_token=_form_token(api), **{**fields, "request_id": ".."})
    assert refused.status_code == 400 and "request_id must be" in refused.text
    assert db.execute("SELECT count(*) FROM retention.subject_request_inbox").fetchone()[0] == 0
