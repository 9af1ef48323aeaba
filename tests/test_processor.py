"""Erasure at the payment processor (plugins/retention/processor.py) against a stub of the
Stripe API on loopback (tools/stripe_stub.py): detach, customer deletion, idempotency, retries
on 5xx and timeouts, and through the engine: a payment reference row goes only once the
processor confirmed, otherwise it stays and is reported."""

from __future__ import annotations

import pytest
from retention.archive_store import ArchiveStore
from retention.engine import RetentionEngine, RunContext
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
