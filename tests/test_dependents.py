"""Nothing waits forever without anyone deciding (issue 18, item 8): the policy's `dependents`.

A former customer whose relationship ended 3 years and a day ago, with a chat message never
transmitted to VETOPHONIE, a consultation never transmitted and an information request still
open, goes with all three (go_with_parent), archived and deleted under the engine's protocol; a
child under a legal hold still keeps its parent; a pending identity document (a legal
obligation) keeps the customer and is reported as waiting past their end, with an alarm. The
decisions are validated when the policy loads."""

from __future__ import annotations

import copy
import datetime as dt
import io

import psycopg
import pyarrow.parquet as pq
import pytest
import yaml
from retention.archive.engine import RetentionEngine
from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore
from retention.paths import POLICY_FILE
from retention.policy import PolicyError, load_policy

from tests import factories as f
from tests import factories_policy as fp

D = f.midnight("2026-06-01")
DUE = "2023-05-31"  # relationship ended 3 years and a day before D
NOT_YET = "2023-06-02"  # a day short of 3 years at D


# ---------------------------------------------------------------------- the policy


@pytest.fixture
def policy_data() -> dict:
    return yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))


def _load(tmp_path, data) -> object:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_policy(path)


def test_the_shipped_policy_sends_what_never_reaches_its_clock_with_the_person():
    policy = load_policy()
    rules = {r.name: r for r in policy.purpose("prospects").rules}
    order = list(rules)
    for child in ("chat_messages", "vet_consultations", "information_requests"):
        generated = rules[f"former_customers__{child}"]
        assert (generated.table, generated.clock) == (child, "customers.relationship_ended_at")
        assert (generated.live, generated.tier, generated.archive) == (
            rules["former_customers"].live,
            "probative",
            rules["former_customers"].archive,
        )
        assert generated.with_parent.rule == "former_customers"
        assert order.index(generated.name) < order.index("former_customers"), "children before their parent"
    assert order.index("former_customer_pets__vet_consultations") < order.index("former_customer_pets")
    assert order.index("prospects__information_requests") < order.index("prospects")
    # Nothing goes with a person before the policy says so; identity documents keep the customer.
    assert policy.decision("customers", "identity_documents") == "keep_parent_and_alert"
    assert policy.decision("customers", "marketing_contacts") == "keep_parent"
    assert not any(r.with_parent for p in policy.purposes.values() for r in p.schedule_rules)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["dependents"]["customers"].update({"chat_messages.customer_id": "go_with_parnet"}),
            r"field 'dependents\.customers\.chat_messages\.customer_id': Input should be 'go_with_parent', "
            r"'keep_parent' or 'keep_parent_and_alert'",
        ),
        (
            lambda d: d["dependents"]["customers"].update({"identity_documents.customer_id": "go_with_parent"}),
            r"customers -> identity_documents\.customer_id: go_with_parent: rule 'checked_identity_documents' of "
            r"purpose 'rights_requests' keeps 'identity_documents' for a legal reason",
        ),
        (
            lambda d: d["dependents"]["customers"].update({"aml_records.customer_id": "go_with_parent"}),
            r"rule 'aml_records' of purpose 'aml' keeps 'aml_records' for a legal reason",
        ),
        (  # a purpose whose records outlive even an erasure request (fraud prevention)
            lambda d: d["dependents"]["contracts"].update({"fraud_alerts.contract_id": "go_with_parent"}),
            r"rule 'unqualified_alerts' of purpose 'fraud' keeps 'fraud_alerts' for a legal reason",
        ),
        (  # found by a review: the generated rule deleted the card reference without the processor
            lambda d: d["dependents"]["contracts"].update({"payment_methods.contract_id": "go_with_parent"}),
            r"rule 'payment_references' of purpose 'contracts' erases 'payment_methods' at the payment processor",
        ),
        (
            lambda d: (
                d["dependents"]["pets"].update({"contracts.pet_id": "go_with_parent"}),
                d["legal_holds"]["covers"]["pets"].remove("contracts.pet_id"),
            ),
            r"pets -> contracts\.pet_id: go_with_parent needs the same link in legal_holds\.covers\.pets",
        ),
        (
            lambda d: d["dependents"].update({"invoices": {"claims.invoice_id": "keep_parent"}}),
            r"dependents: no rule of the policy has table 'invoices'",
        ),
        (
            lambda d: d["dependents"]["customers"].update({"chat_messages": "go_with_parent"}),
            r"customers: 'chat_messages' is not '<table>\.<column>'",
        ),
        (
            lambda d: d["purposes"]["quotes"]["rules"][0].update(
                {"with_parent": {"rule": "former_customers", "table": "customers", "column": "customer_id"}}
            ),
            r"'with_parent' is set from `dependents`, not written in the file",
        ),
        (
            lambda d: d["access_exports"].update({"kept_for": "0 days"}),
            r"field 'access_exports\.kept_for': Value error, an export kept 0 days would be deleted before",
        ),
        (
            lambda d: d["access_exports"].update({"kept_for": "a month"}),
            r"field 'access_exports\.kept_for'.*is not a period",
        ),
    ],
    ids=[
        "typo",
        "legal-obligation",
        "aml",
        "overriding-grounds",
        "erased-at-the-processor",
        "not-covered-by-holds",
        "parent-without-rule",
        "not-a-column",
        "with_parent-in-file",
        "export-0-days",
        "export-not-a-period",
    ],
)
def test_a_bad_decision_is_refused_when_the_policy_loads(tmp_path, policy_data, mutate, expected):
    data = copy.deepcopy(policy_data)
    mutate(data)
    with pytest.raises(PolicyError, match=expected) as error:
        _load(tmp_path, data)
    assert str(tmp_path / "policy.yaml") in str(error.value), "the message names the file"


# ---------------------------------------------------------------------- the engine


def _engine(policy, source_dsn, s3, storage, purpose: str = "prospects") -> RetentionEngine:
    return RetentionEngine(policy, purpose, source_dsn, ArchiveStore(s3, storage), lock_timeout=2)


def _run(engine, at: dt.datetime = D) -> dict:
    return {o.rule: o for o in engine.archive_and_delete(RunContext(engine.purpose_name, "run", at))}


def _archived(db, s3, storage, table: str) -> dict[int, dict]:
    """Ids of ``table`` in the committed archive objects (read back), with each object's owners."""
    found = {}
    for key, rule, owners in db.execute(
        "SELECT object_key, rule, owner_ids FROM retention.archive_manifest WHERE table_name = %s"
        " AND state = 'committed'",
        (table,),
    ):
        body = s3.get_object(Bucket=storage.archive_bucket, Key=key)["Body"].read()
        for record_id in pq.read_table(io.BytesIO(body), columns=["id"]).column("id").to_pylist():
            found[record_id] = {"rule": rule, "key": key, "owners": owners}
    return found


@pytest.mark.integration
def test_a_former_customer_past_their_period_goes_with_what_never_reached_its_clock(
    db, s3, storage, policy, source_dsn
):
    customer = f.customer(db, ended=DUE)
    pet = f.pet(db, customer)
    message = fp.chat_message(db, customer, sent_at=f.paris("2023-05-20"))  # never transmitted
    consultation = fp.vet_consultation(db, customer, pet_id=pet)  # never transmitted
    request = fp.information_request(db, customer_id=customer)  # still open
    # A day short of their 3 years: the same children keep everything in place.
    later = f.customer(db, ended=NOT_YET)
    later_rows = {
        "chat_messages": fp.chat_message(db, later),
        "information_requests": fp.information_request(db, customer_id=later),
        "vet_consultations": fp.vet_consultation(db, later),
    }
    # Their own purposes keep them: no clock, never due there.
    assert not _run(_engine(policy, source_dsn, s3, storage, "subscriber_services"))["chat_messages"].deleted

    engine = _engine(policy, source_dsn, s3, storage)
    planned = {o.rule: o for o in engine.make_plan(RunContext("prospects", "run", D), range_rows=None).rules}
    assert planned["former_customers"].deletable == 1 and not planned["former_customers"].waiting
    outcomes = _run(engine)

    assert outcomes["former_customers"].deleted == 1 and not outcomes["former_customers"].waiting
    assert outcomes["former_customers__chat_messages"].deleted == 1
    assert outcomes["former_customer_pets__vet_consultations"].deleted == 1  # the pet's goes first
    assert outcomes["former_customers__information_requests"].deleted == 1
    assert customer not in f.ids(db, "customers") and pet not in f.ids(db, "pets")
    assert message not in f.ids(db, "chat_messages") and request not in f.ids(db, "information_requests")
    assert consultation not in f.ids(db, "vet_consultations")
    for table, record_id in later_rows.items():
        assert record_id in f.ids(db, table), table
    assert later in f.ids(db, "customers")

    # Archived with the customer (probative, 5 years), each object naming the customer among its
    # owners: a hold placed later on the customer keeps them.
    for table, record_id, rule in (
        ("chat_messages", message, "former_customers__chat_messages"),
        ("information_requests", request, "former_customers__information_requests"),
        ("vet_consultations", consultation, "former_customer_pets__vet_consultations"),
        ("customers", customer, "former_customers"),
    ):
        archived = _archived(db, s3, storage, table)[record_id]
        assert archived["rule"] == rule and archived["key"].startswith("probative/prospects/"), table
        if table != "customers":
            assert customer in archived["owners"]["customers"], table
    audit = dict(
        db.execute(
            "SELECT rule, sum(record_count) FROM retention.audit_log WHERE action = 'archived_and_deleted'"
            " AND purpose = 'prospects' GROUP BY 1"
        ).fetchall()
    )
    assert audit["former_customers__chat_messages"] == 1 and audit["former_customers"] == 1


@pytest.mark.integration
def test_a_held_child_still_keeps_its_parent(db, s3, storage, policy, source_dsn):
    customer = f.customer(db, ended=DUE)
    held_message = fp.chat_message(db, customer)
    f.legal_hold(db, "chat_messages", held_message)
    request = fp.information_request(db, customer_id=customer)

    outcomes = _run(_engine(policy, source_dsn, s3, storage))

    assert outcomes["former_customers__chat_messages"].held == 1
    assert outcomes["former_customers"].waiting == {"chat_messages": 1}
    assert held_message in f.ids(db, "chat_messages") and customer in f.ids(db, "customers")
    assert not _archived(db, s3, storage, "chat_messages"), "nothing of the held message is archived"
    # Its other open request goes: the customer's period is over, and nothing holds it.
    assert request not in f.ids(db, "information_requests")


@pytest.mark.integration
def test_a_hold_on_the_customer_keeps_them_and_every_child(db, s3, storage, policy, source_dsn):
    customer = f.customer(db, ended="2020-01-01")
    f.legal_hold(db, "customers", customer)
    message = fp.chat_message(db, customer)
    request = fp.information_request(db, customer_id=customer)

    outcomes = _run(_engine(policy, source_dsn, s3, storage))

    assert outcomes["former_customers__chat_messages"].held == 1
    assert outcomes["former_customers__information_requests"].held == 1
    assert outcomes["former_customers"].held == 1
    assert {message} <= f.ids(db, "chat_messages") and {request} <= f.ids(db, "information_requests")


@pytest.mark.integration
def test_a_pending_identity_check_keeps_the_customer_and_is_reported_waiting_past_their_end(
    db, s3, storage, policy, source_dsn
):
    """A legal obligation the policy lets wait with an alarm: the identity document and its
    customer stay; the customer's messages, past their own period, do not."""
    from retention.alerts import alarms
    from retention.status import purposes_status

    customer = f.customer(db, ended="2023-01-10")
    document = fp.identity_document(db, customer_id=customer)  # pending
    message = fp.chat_message(db, customer)

    outcomes = _run(_engine(policy, source_dsn, s3, storage))

    assert outcomes["former_customers"].waiting == {"identity_documents": 1}
    assert customer in f.ids(db, "customers") and document in f.ids(db, "identity_documents")
    assert message not in f.ids(db, "chat_messages")

    with psycopg.connect(source_dsn, autocommit=True) as conn:
        [prospects] = [s for s in purposes_status(conn, policy, D, overdue_days=3) if s.purpose == "prospects"]
    # Due at 2026-01-10 (3 years after the relationship ended): 142 days before D.
    assert prospects.waiting_past_end == [
        {
            "rule": "former_customers",
            "table": "customers",
            "waiting_on": "identity_documents",
            "decision": "keep_parent_and_alert",
            "records": 1,
            "past_grace": 1,
            "oldest_due": "2026-01-10",
            "oldest_days": 142,
            "alarm": True,
        }
    ]
    assert prospects.waiting_alarm == 1
    [alarm] = [a for a in alarms([prospects], {"prospects": D}, D, 3) if a.kind == "waiting"]
    assert str(alarm) == (
        "prospects: waiting: 1 records waiting past their end for more than 3 days with no decision to let them "
        "wait (former_customers on identity_documents (keep_parent_and_alert): 1, oldest 142 days)"
    )
    # Within the grace period: shown, no alarm yet.
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        [early] = [
            s
            for s in purposes_status(conn, policy, f.midnight("2026-01-12"), overdue_days=3)
            if s.purpose == "prospects"
        ]
    assert [(w["records"], w["past_grace"], w["alarm"]) for w in early.waiting_past_end] == [(1, 0, False)]


@pytest.mark.integration
def test_a_wait_the_policy_accepts_is_shown_without_an_alarm(db, s3, storage, policy, source_dsn):
    from retention.status import purposes_status

    customer = f.customer(db, ended="2023-01-10")
    fp.marketing_contact(db, channel="phone", last_contact="2024-01-10", customer_id=customer)  # 3 years: 2027
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        [prospects] = [s for s in purposes_status(conn, policy, D, overdue_days=3) if s.purpose == "prospects"]
    [wait] = prospects.waiting_past_end
    assert (wait["waiting_on"], wait["decision"], wait["past_grace"], wait["alarm"]) == (
        "marketing_contacts",
        "keep_parent",
        1,
        False,
    )
    assert prospects.waiting_alarm == 0


@pytest.mark.integration
def test_every_foreign_key_that_makes_a_record_wait_is_decided(db, policy):
    """Each link of the shipped schema through which a rule's row can wait has a decision, and
    every decision names such a link (none is stale)."""
    from retention.planner import Planner

    links = set()
    for name in policy.purposes:
        planner = Planner.load(db, policy, name)
        for parent, blockers in planner.blockers.items():
            links |= {(parent, f"{b.table}.{b.column}") for b in blockers}
    decided = {(parent, child) for parent, children in policy.dependents.items() for child in children}
    assert links - decided == set(), "links the policy does not decide"
    assert decided - links == set(), "decisions about links the schema does not have"


@pytest.mark.integration
def test_the_prospects_dag_takes_them_through_its_gates(airflow_db, db, s3, storage, policy):
    """The same case through the DAG: one mapped task per generated rule, before its parent's,
    and the quality gates (after-gate: nothing due left) pass."""
    from tests.dag_runs import run_dag, task_states, xcoms

    customer = f.customer(db, ended=DUE)
    message = fp.chat_message(db, customer)
    request = fp.information_request(db, customer_id=customer)
    dag_run = run_dag("prospects", D)
    states = task_states(dag_run)
    assert set(states.values()) == {"success"}, states
    assert "archive_former_customers__chat_messages" in states
    summary = {r["rule"]: r for r in xcoms(dag_run)["archive_and_delete"]["rules"]}
    assert summary["former_customers__chat_messages"]["deleted"] == 1
    assert summary["former_customers__information_requests"]["deleted"] == 1
    assert summary["former_customers"]["deleted"] == 1
    assert not ({customer} & f.ids(db, "customers") or {message} & f.ids(db, "chat_messages"))
    assert not {request} & f.ids(db, "information_requests")
