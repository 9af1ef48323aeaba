"""Erasure at the payment processor (plugins/retention/processor.py) against a stub of the
Stripe API on loopback (tools/stripe_stub.py): detach, customer deletion, idempotency, retries
on 5xx and timeouts, and through the engine: a payment reference row goes only once the
processor confirmed, otherwise it stays and is reported; each call decided on the current
state, against the application writing at the same time; no processor id in any log."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from retention import processor
from retention.archive.engine import RetentionEngine
from retention.archive.run import RunContext
from retention.archive.store import ArchiveStore
from retention.processor import WAITING_ON, PaymentReference, StripeEraser, erase_payment_methods

from tests import factories as f
from tools.stripe_stub import API_KEY


@pytest.fixture
def eraser(stripe_stub):
    return StripeEraser.from_connection()  # AIRFLOW_CONN_STRIPE_DEFAULT -> the stub


def ref(i: int, cus: str = "cus_A", pm: str | None = None, delete_customer: bool = True) -> PaymentReference:
    return PaymentReference(i, cus, pm or f"pm_{i}", delete_customer)


def test_detach_then_delete_the_customer_with_the_official_client(stripe_stub, eraser):
    result = eraser.erase([ref(1), ref(2)])
    assert (sorted(result.confirmed), result.failed) == ([1, 2], {})
    requests = stripe_stub.state.requests
    assert [(r.method, r.path) for r in requests] == [
        ("POST", "/v1/payment_methods/pm_1/detach"),
        ("POST", "/v1/payment_methods/pm_2/detach"),
        ("DELETE", "/v1/customers/cus_A"),
    ]
    assert all(r.authorization == f"Bearer {API_KEY}" for r in requests)


def test_erasure_is_idempotent(stripe_stub, eraser):
    eraser.erase([ref(1)])
    stripe_stub.state.missing.add("pm_gone")
    again = eraser.erase([ref(1), ref(2, pm="pm_gone")])  # 400 already detached, 404, 404 customer
    assert (sorted(again.confirmed), again.failed) == ([1, 2], {})


def test_the_customer_stays_when_asked_to(stripe_stub, eraser):
    result = eraser.erase([ref(1, delete_customer=False)])
    assert result.confirmed == [1]
    assert stripe_stub.state.paths("DELETE") == []


def test_a_5xx_is_retried_with_the_same_idempotency_key(stripe_stub, eraser):
    stripe_stub.state.fail("/pm_1/", 500, 503)
    result = eraser.erase([ref(1)])
    assert result.confirmed == [1]
    detaches = [r for r in stripe_stub.state.requests if r.path.endswith("/detach")]
    assert len(detaches) == 3
    assert detaches[0].idempotency_key and len({r.idempotency_key for r in detaches}) == 1


def test_a_timeout_is_retried(stripe_stub, eraser):
    stripe_stub.state.stall("/pm_1/", 3.0)  # the connection's timeout is 2 s
    result = eraser.erase([ref(1)])
    assert result.confirmed == [1]
    assert len(stripe_stub.state.paths("POST")) == 2


def test_an_erasure_not_confirmed_is_reported_and_keeps_the_customer(stripe_stub, eraser):
    stripe_stub.state.fail("/pm_2/", 500, 500, 500)  # more than the 2 retries
    result = eraser.erase([ref(1), ref(2)])
    assert result.confirmed == [1]
    assert list(result.failed) == [2] and "APIError" in result.failed[2] and "pm_2" not in result.failed[2]
    assert stripe_stub.state.paths("DELETE") == [], "the customer still has a method we could not erase"

    stripe_stub.state.fail("/customers/", 502, 502, 502)
    result = eraser.erase([ref(3, cus="cus_B")])
    assert result.confirmed == [] and list(result.failed) == [3], "customer not deleted: its row stays"


@pytest.mark.parametrize("parallel", [1, 4])
def test_several_customers_are_erased_at_once_each_in_its_own_order(stripe_stub, eraser, parallel):
    """Eight processor customers of two cards each, the processor answering in 100 ms: with
    ``parallel_customers`` above 1 several calls are in flight at once (one at a time with 1);
    each customer's cards are detached before it is deleted, and the rows are listed in the
    customers' order whatever the order of the answers."""
    stripe_stub.state.latency = 0.1
    eraser.parallel_customers = parallel
    refs = [ref(10 * c + k, cus=f"cus_{c}", pm=f"pm_{c}_{k}") for c in range(8) for k in range(2)]
    result = eraser.erase(refs)
    assert result.confirmed == [r.id for r in refs] and result.failed == {}
    assert result.counts == {"methods_detached": 16, "customers_deleted": 8}
    assert (stripe_stub.state.max_in_flight > 1) == (parallel > 1), stripe_stub.state.max_in_flight
    paths = stripe_stub.state.paths()
    for c in range(8):
        deleted = paths.index(f"/v1/customers/cus_{c}")
        assert all(paths.index(f"/v1/payment_methods/pm_{c}_{k}/detach") < deleted for k in range(2))


def test_no_connection_confirms_nothing(db, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_STRIPE_DEFAULT")
    pm = f.payment_method(db, f.contract(db, ended="2026-01-14"))
    confirmed, failed = erase_payment_methods(db, [pm], f.midnight("2026-01-15"))
    assert confirmed == [] and list(failed) == [pm]


@pytest.mark.integration
def test_contracts_run_erases_at_the_processor_before_deleting(db, s3, storage, policy, source_dsn, stripe_stub):
    D = f.midnight("2026-01-15")
    # One customer, two ended contracts, two cards at the processor: both detached, customer deleted.
    c1 = f.customer(db, ended="2026-01-10")
    k1 = f.contract(db, customer_id=c1, ended="2026-01-10")
    k2 = f.contract(db, customer_id=c1, ended="2026-01-10")
    pm1 = f.payment_method(db, k1, processor_customer_ref="cus_one", processor_method_ref="pm_one_a")
    pm2 = f.payment_method(db, k2, processor_customer_ref="cus_one", processor_method_ref="pm_one_b")
    # A customer with one ended and one running contract: the card of the ended one is detached,
    # the processor customer stays (their subscription runs).
    c2 = f.customer(db)
    ended = f.contract(db, customer_id=c2, ended="2026-01-01")
    running = f.contract(db, customer_id=c2)
    pm3 = f.payment_method(db, ended, processor_customer_ref="cus_two", processor_method_ref="pm_two_a")
    pm4 = f.payment_method(db, running, processor_customer_ref="cus_two", processor_method_ref="pm_two_b")
    # A held contract: its card is never sent to the processor.
    held = f.contract(db, ended="2025-06-01")
    f.legal_hold(db, "contracts", held)
    pm5 = f.payment_method(db, held, processor_customer_ref="cus_held", processor_method_ref="pm_held")
    # The processor fails for this one: the row stays, reported, retried by the next run.
    k3 = f.contract(db, ended="2026-01-05")
    pm6 = f.payment_method(db, k3, processor_customer_ref="cus_three", processor_method_ref="pm_three")
    stripe_stub.state.fail("/pm_three/", 503, 503, 503)

    engine = RetentionEngine(policy, "contracts", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
    outcomes = {o.rule: o for o in engine.archive_and_delete(RunContext("contracts", "run1", D, batch_size=2))}

    payment = outcomes["payment_references"]
    assert payment.deleted == 3 and payment.held == 1
    assert payment.waiting == {WAITING_ON: 1} and pm6 in payment.waiting_ids
    assert f.ids(db, "payment_methods") == {pm4, pm5, pm6}
    assert {pm1, pm2, pm3}.isdisjoint(f.ids(db, "payment_methods"))
    assert stripe_stub.state.detached == {"pm_one_a", "pm_one_b", "pm_two_a"}
    assert stripe_stub.state.deleted_customers == {"cus_one"}
    assert not [p for p in stripe_stub.state.paths() if "held" in p], "a held card must not reach the processor"
    # The contract whose card is still referenced waits; the others go.
    assert k3 in f.ids(db, "contracts") and k1 not in f.ids(db, "contracts")

    # The processor is back: the next run erases it and deletes the row (and customer).
    run2 = {o.rule: o for o in engine.archive_and_delete(RunContext("contracts", "run2", D))}
    assert run2["payment_references"].deleted == 1 and not run2["payment_references"].waiting
    assert f.ids(db, "payment_methods") == {pm4, pm5}
    assert "cus_three" in stripe_stub.state.deleted_customers


@pytest.mark.integration
def test_contracts_dag_reports_rows_the_processor_did_not_confirm(airflow_db, db, s3, storage, stripe_stub):
    from tests.dag_runs import run_dag, task_states

    contract = f.contract(db, ended="2026-01-05")
    pm = f.payment_method(db, contract, processor_method_ref="pm_down")
    stripe_stub.state.fail("/pm_down/", *[500] * 6)
    states = task_states(run_dag("contracts", f.midnight("2026-01-15")))
    assert pm in f.ids(db, "payment_methods") and contract in f.ids(db, "contracts")
    assert states["archive_and_delete"] == "success"
    assert states["check_after"] == "failed", "the after-gate names the payment reference left behind"


def test_the_client_logs_no_processor_ids(stripe_stub, eraser, caplog):
    caplog.set_level(logging.DEBUG)  # even an operator's DEBUG: urllib3 names every request path
    result = eraser.erase([ref(1, cus="cus_Mask01", pm="pm_Mask01")])
    assert result.confirmed == [1] and stripe_stub.state.paths("DELETE") == ["/v1/customers/cus_Mask01"]
    assert "/v1/" in caplog.text, "the HTTP layer's lines were captured, ids masked"
    assert "Mask01" not in caplog.text


# The race of issue 18, item 2: the application (its own connection) writes for a processor
# customer while the run is erasing that customer at the processor.
RACE_DATE = f.midnight("2026-01-15")


def run_in_background(pool, policy, source_dsn, s3, storage):
    engine = RetentionEngine(policy, "contracts", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
    return pool.submit(engine.archive_and_delete, RunContext("contracts", "race", RACE_DATE))


def application_writes(source_dsn, write) -> tuple:
    """One application transaction (its own connection): ``write(conn)``, then commit."""
    with psycopg.connect(source_dsn) as conn:
        result = write(conn)
        conn.commit()
        return result


def sign_new_contract(person: int):
    """The application's write of the race: a new contract of ``person`` paid by a new card of
    the same processor customer (cus_race); returns (contract, card)."""

    def write(conn):
        contract = f.contract(conn, customer_id=person, started="2026-01-14")
        card = f.payment_method(conn, contract, processor_customer_ref="cus_race", processor_method_ref="pm_race_new")
        return contract, card

    return write


def wait_for_lock_waiters(db, count: int) -> int:
    """How many sessions wait for an advisory lock (the processor customer's), once ``count`` do
    or after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        waiting = db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]
        if waiting >= count or time.monotonic() > deadline:
            return waiting
        time.sleep(0.05)


@pytest.fixture
def patient_client(stripe_stub, monkeypatch):
    """The stub's connection with a timeout longer than a held call (no retry meanwhile)."""
    monkeypatch.setenv("AIRFLOW_CONN_STRIPE_DEFAULT", json.dumps(stripe_stub.connection(timeout=30)))


@pytest.mark.integration
def test_a_contract_and_card_committed_mid_erasure_keep_the_customer(
    db, s3, storage, policy, source_dsn, stripe_stub, patient_client
):
    """The old card is being detached (the processor holds the call) when the same person signs
    a new contract with a new card, same processor customer: the write waits for the detach to
    be answered, commits, and the customer's deletion, re-decided under the lock, sees it."""
    person = f.customer(db)
    old_contract = f.contract(db, customer_id=person, ended="2026-01-10")
    old_card = f.payment_method(db, old_contract, processor_customer_ref="cus_race", processor_method_ref="pm_race_old")
    detaching = stripe_stub.state.hold("/pm_race_old/")

    with ThreadPoolExecutor(2) as pool:
        try:
            run = run_in_background(pool, policy, source_dsn, s3, storage)
            assert detaching.reached.wait(30), "the run reached the processor"
            signing = pool.submit(application_writes, source_dsn, sign_new_contract(person))
            assert wait_for_lock_waiters(db, 1) == 1, "the application's write waits for the call in flight"
        finally:
            detaching.release.set()
        new_contract, new_card = signing.result(timeout=30)
        outcomes = {o.rule: o for o in run.result(timeout=60)}

    assert stripe_stub.state.detached == {"pm_race_old"}, "the old card is detached"
    assert stripe_stub.state.deleted_customers == set(), "the customer the new contract uses stays"
    assert not [p for p in stripe_stub.state.paths() if "pm_race_new" in p], "the new card is never touched"
    payment = outcomes["payment_references"]
    assert payment.deleted == 1 and not payment.waiting
    assert payment.as_dict()["processor"] == {"methods_detached": 1, "customers_kept": 1}, "the report says so"
    assert old_card not in f.ids(db, "payment_methods") and new_card in f.ids(db, "payment_methods")
    assert new_contract in f.ids(db, "contracts")


@pytest.mark.integration
def test_other_customers_go_on_while_one_is_raced_by_the_application(
    db, s3, storage, policy, source_dsn, stripe_stub, patient_client
):
    """The race above with five other ended customers in the same batch: erased at the same time,
    they are all done while the raced customer's call is still held; the raced customer's
    deletion is still decided under its lock and sees the new contract."""
    person = f.customer(db)
    old_contract = f.contract(db, customer_id=person, ended="2026-01-10")
    old_card = f.payment_method(db, old_contract, processor_customer_ref="cus_race", processor_method_ref="pm_race_old")
    others = []
    for n in range(5):
        contract = f.contract(db, customer_id=f.customer(db), ended="2026-01-10")
        others.append(
            f.payment_method(db, contract, processor_customer_ref=f"cus_o{n}", processor_method_ref=f"pm_o{n}")
        )
    detaching = stripe_stub.state.hold("/pm_race_old/")

    with ThreadPoolExecutor(2) as pool:
        try:
            run = run_in_background(pool, policy, source_dsn, s3, storage)
            assert detaching.reached.wait(30), "the run reached the processor"
            signing = pool.submit(application_writes, source_dsn, sign_new_contract(person))
            assert wait_for_lock_waiters(db, 1) == 1, "the application's write waits for the call in flight"
            deadline = time.monotonic() + 20
            while len(stripe_stub.state.deleted_customers) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert stripe_stub.state.deleted_customers == {f"cus_o{n}" for n in range(5)}, "the others went on"
        finally:
            detaching.release.set()
        new_contract, _ = signing.result(timeout=30)
        outcomes = {o.rule: o for o in run.result(timeout=60)}

    assert stripe_stub.state.detached == {"pm_race_old"} | {f"pm_o{n}" for n in range(5)}
    assert "cus_race" not in stripe_stub.state.deleted_customers, "the customer the new contract uses stays"
    payment = outcomes["payment_references"]
    assert payment.deleted == 6 and not payment.waiting
    assert payment.as_dict()["processor"] == {"methods_detached": 6, "customers_deleted": 5, "customers_kept": 1}
    assert f.ids(db, "payment_methods").isdisjoint([old_card, *others])
    assert new_contract in f.ids(db, "contracts")


@pytest.mark.integration
def test_the_card_on_file_of_a_newer_contract_is_not_detached(db, s3, storage, policy, source_dsn, stripe_stub):
    """A newer contract pays with the card already on file: our old row goes, the card and the
    customer stay at the processor."""
    person = f.customer(db)
    old = f.contract(db, customer_id=person, ended="2026-01-10")
    running = f.contract(db, customer_id=person, started="2026-01-12")
    old_row = f.payment_method(db, old, processor_customer_ref="cus_onfile", processor_method_ref="pm_onfile")
    new_row = f.payment_method(db, running, processor_customer_ref="cus_onfile", processor_method_ref="pm_onfile")
    engine = RetentionEngine(policy, "contracts", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
    payment = {o.rule: o for o in engine.archive_and_delete(RunContext("contracts", "run1", RACE_DATE))}[
        "payment_references"
    ]
    assert payment.deleted == 1 and payment.processor == {"methods_kept_in_use": 1, "customers_kept": 1}
    assert stripe_stub.state.requests == [], "nothing to erase at the processor"
    assert f.ids(db, "payment_methods") == {new_row} and old_row not in f.ids(db, "payment_methods")


@pytest.mark.integration
def test_the_application_waits_for_a_customer_deletion_in_flight(
    db, s3, storage, policy, source_dsn, stripe_stub, patient_client
):
    """While the processor answers the customer's deletion, a card written for that customer and
    a contract set back to running wait (database triggers); they commit once it was answered,
    never between the re-check and the call (the run went first: the application learns of the
    deletion at its next call, the erasure never missed a committed write)."""
    person = f.customer(db)
    ended = f.contract(db, customer_id=person, ended="2026-01-10")
    f.payment_method(db, ended, processor_customer_ref="cus_wait", processor_method_ref="pm_wait_old")
    # An older contract of the same person (its card long gone): the application resumes it.
    older = f.contract(db, customer_id=person, ended="2025-12-01")
    deleting = stripe_stub.state.hold("/customers/cus_wait")

    def add_card(conn):
        return f.payment_method(conn, ended, processor_customer_ref="cus_wait", processor_method_ref="pm_wait_new")

    def resume_older(conn):
        conn.execute("UPDATE app.contracts SET ended_at = NULL, status = 'active' WHERE id = %s", (older,))

    with ThreadPoolExecutor(3) as pool:
        try:
            run = run_in_background(pool, policy, source_dsn, s3, storage)
            assert deleting.reached.wait(30), "the run reached the customer's deletion"
            writes = [pool.submit(application_writes, source_dsn, write) for write in (add_card, resume_older)]
            assert wait_for_lock_waiters(db, 2) == 2, "both writes wait for the call in flight"
            assert not any(w.done() for w in writes)
        finally:
            deleting.release.set()
        for w in writes:
            w.result(timeout=30)
        run.result(timeout=60)
    assert stripe_stub.state.deleted_customers == {"cus_wait"}
    assert db.execute("SELECT ended_at FROM app.contracts WHERE id = %s", (older,)).fetchone() == (None,)


@pytest.mark.integration
def test_a_customer_locked_by_the_application_waits_for_the_next_run(
    db, s3, storage, policy, source_dsn, stripe_stub, monkeypatch
):
    """An application transaction writing for the processor customer and not committing: the
    run calls nothing for that customer, keeps its rows and reports them waiting."""
    monkeypatch.setattr(processor, "CUSTOMER_LOCK_WAIT_S", 0.5)
    contract = f.contract(db, ended="2026-01-10")
    row = f.payment_method(db, contract, processor_customer_ref="cus_busy", processor_method_ref="pm_busy")
    with psycopg.connect(source_dsn) as application:
        f.payment_method(application, contract, processor_customer_ref="cus_busy", processor_method_ref="pm_busy_2")
        engine = RetentionEngine(policy, "contracts", source_dsn, ArchiveStore(s3, storage), lock_timeout=2)
        outcomes = {o.rule: o for o in engine.archive_and_delete(RunContext("contracts", "run1", RACE_DATE))}
        application.rollback()
    payment = outcomes["payment_references"]
    assert payment.waiting == {WAITING_ON: 1} and payment.waiting_ids == [row] and payment.deleted == 0
    assert stripe_stub.state.requests == [] and row in f.ids(db, "payment_methods")


@pytest.mark.integration
def test_a_contracts_run_logs_no_processor_ids(airflow_db, db, s3, storage, stripe_stub, caplog, capfd):
    """Issue 18, item 3: the task logs (records and the console) of a contracts run hold counts,
    never a processor id, and the report counts what was done at the processor."""
    from tests.dag_runs import run_dag, task_states, xcoms

    caplog.set_level(logging.INFO)  # what task logs hold (Airflow's default logging level)
    customer = f.customer(db, ended="2026-01-05")
    contract = f.contract(db, customer_id=customer, ended="2026-01-05")
    f.payment_method(db, contract, processor_customer_ref="cus_LogScan01", processor_method_ref="pm_LogScan01")
    dag_run = run_dag("contracts", f.midnight("2026-01-15"))
    assert set(task_states(dag_run).values()) == {"success"}
    assert stripe_stub.state.detached == {"pm_LogScan01"}, "the run reached the processor"
    captured = capfd.readouterr()
    logs = "\n".join([caplog.text, captured.out, captured.err])
    assert "payment_references" in logs, "the run's task logs were captured"
    leaked = sorted({line for line in logs.splitlines() if "pm_" in line or "cus_" in line})
    assert not leaked, leaked[:5]
    report = xcoms(dag_run)["report"]["table"]
    assert "payment processor (payment_references): customers_deleted=1, methods_detached=1" in report
