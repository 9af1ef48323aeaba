"""Erasure at the payment processor (Stripe) before our payment reference rows are deleted.

The policy: card and IBAN data "sont conservées par notre prestataire de service de paiement
Stripe jusqu'à la fin de votre abonnement". When the contracts purpose deletes
``app.payment_methods`` rows (rule ``payment_references``, tier none, flagged
``erase_at_processor: stripe`` in the policy file), each row's payment method is first
erased at the processor through its API, with the official ``stripe`` client pointed at the
Airflow connection ``stripe_default`` (host = API base URL, password = secret key; extra
``max_network_retries``, ``timeout``):

- detach the payment method (``POST /v1/payment_methods/{pm}/detach``), unless another row of
  ours still references it (a newer contract using the card on file);
- delete the processor customer (``DELETE /v1/customers/{cus}``) once no row of ours still
  references it and no contract of that customer still runs (a held, waiting or running
  payment method keeps the processor customer too).

Decided on the current state, call by call: immediately before each call advisory locks are
taken (the processor customer's; for its deletion, also our customers' whose contracts it
served) and the rows and contracts are read again (a new statement sees every commit made
before); the locks are held until the processor answered, then released. The application's
writes that could put the customer or a card back in use (a payment method written, a contract
inserted or set back to running) take the same locks, shared, in triggers
(include/sql/schema/030_processor_erasure.sql) and keep them to their commit: such a write
either committed before the re-check, which sees it, or waits until the call was answered.
Every call is scoped to the rows this run decided: the cards of those rows, their customer.

Several processor customers are erased at once (``PARALLEL_CUSTOMERS``: the processor answers
in hundreds of milliseconds, thousands of cards one after the other would take the daily window):
their checks share the batch's connection (psycopg serializes the statements, which take a
millisecond; the calls overlap). One customer's calls stay in order, detaches then deletion.

Idempotent: an object already gone (404 ``resource_missing``) or a payment method already
detached counts as erased, so a re-run after a crash between the processor's answer and our
commit is safe. Retried by the client on 5xx, 409, connection errors and timeouts
(``max_network_retries``, exponential backoff, idempotency keys on POST). A row whose erasure
the processor did not confirm stays in our database and is reported (``waiting`` on
``payment_processor`` in the run's outcome; the after-gate then names the rows left): it is
retried by the next run.

The narrow interface: ``erase_payment_methods(conn, ids, logical_date) -> (confirmed, failed)``.
Nothing here logs processor references or personal data: row ids, counts and error classes
only; the client's own request log (every URL, so every ``pm_``/``cus_`` id) is silenced
(``quiet_client_logs``).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

STRIPE_CONN_ID = "stripe_default"
# Processor customers erased at once (the connection's extra ``parallel_customers``).
PARALLEL_CUSTOMERS = 8
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT_S = 20.0
WAITING_ON = "payment_processor"  # how unconfirmed rows show in the run's outcome
# How long a call waits for its locks while the application holds them (a payment method or a
# contract of that customer being written) before the customer's rows are left for the next run.
CUSTOMER_LOCK_WAIT_S = 10.0
# The advisory locks the application's writes take (030_processor_erasure.sql): a processor
# customer's, taken by a payment method written; our customer's, by a contract (re)started.
_PROCESSOR_CUSTOMER_LOCK = "hashtext('retention:processor_customer'), retention.processor_customer_lock_key(%s)"
_CONTRACT_CUSTOMER_LOCK = "hashtext('retention:contract_customer'), retention.contract_customer_lock_key(%s)"


class ProcessorError(Exception):
    """The processor did not confirm an erasure (after the client's retries)."""


@dataclass(frozen=True)
class PaymentReference:
    """One row of app.payment_methods about to be deleted, and what its erasure needs."""

    id: int
    customer_ref: str
    method_ref: str
    # The processor customer goes too, unless it is still in use (for the eraser alone: as
    # decided by the caller; through the database: re-checked under lock before the call).
    delete_customer: bool


@dataclass
class ErasureResult:
    confirmed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # row id -> reason (no personal data)
    # What was done at the processor, for the run's report: methods_detached,
    # methods_kept_in_use, customers_deleted, customers_kept.
    counts: Counter = field(default_factory=Counter)

    def add(self, other: ErasureResult) -> None:
        self.confirmed += other.confirmed
        self.failed.update(other.failed)
        self.counts.update(other.counts)


class Decision:
    """Whether a call is still wanted, decided by the caller: the eraser's tests, no database.
    Each method is a context manager around the call, yielding True to skip it (still in use).
    Asked from several threads at once (one processor customer each)."""

    @contextmanager
    def before_detach(self, ref: PaymentReference):
        yield False

    @contextmanager
    def before_customer_deletion(self, customer_ref: str, group: list[PaymentReference]):
        yield not any(ref.delete_customer for ref in group)


class CurrentState(Decision):
    """Each call decided on the database's current state: under advisory locks taken immediately
    before the call and released once it was answered, the rows are read again. The locks are
    the ones the application's writes take (include/sql/schema/030_processor_erasure.sql): the
    processor customer's, and for a customer's deletion also our customers' whose contracts it
    served. ``decided`` are the rows this run deletes (locked by its batch).

    The threads erasing customers in parallel share ``conn``: an advisory lock taken by one of
    them is held by the session, so the application's write waits as it would for one call;
    two customers' checks may both hold one of our customers' lock (re-entrant in a session),
    the write then waits for both."""

    _METHOD_IN_USE = """
SELECT EXISTS (
    SELECT 1 FROM {schema}.payment_methods
    WHERE processor_customer_ref = %(customer)s AND processor_method_ref = %(method)s
      AND id <> ALL(%(decided)s::bigint[]))
"""
    _OUR_CUSTOMERS = """
SELECT DISTINCT c.customer_id FROM {schema}.contracts AS c
JOIN {schema}.payment_methods AS pm ON pm.contract_id = c.id
WHERE pm.id = ANY(%(group)s::bigint[])
ORDER BY 1
"""
    _CUSTOMER_IN_USE = """
SELECT EXISTS (
           SELECT 1 FROM {schema}.payment_methods
           WHERE processor_customer_ref = %(customer)s AND id <> ALL(%(decided)s::bigint[]))
       OR EXISTS (
           SELECT 1 FROM {schema}.contracts
           WHERE customer_id = ANY(%(ours)s::bigint[])
             AND (ended_at IS NULL OR ended_at > %(logical_date)s))
"""

    def __init__(self, conn, decided: list[int], logical_date: dt.datetime, schema: str = "app"):
        self.conn, self.decided, self.logical_date, self.schema = conn, decided, logical_date, schema

    def _query(self, sql: str, params: dict):
        return self.conn.execute(sql.format(schema=self.schema), params)

    @contextmanager
    def before_detach(self, ref: PaymentReference):
        with self._locked([(_PROCESSOR_CUSTOMER_LOCK, ref.customer_ref)]):
            params = {"customer": ref.customer_ref, "method": ref.method_ref, "decided": self.decided}
            yield self._query(self._METHOD_IN_USE, params).fetchone()[0]

    @contextmanager
    def before_customer_deletion(self, customer_ref: str, group: list[PaymentReference]):
        # Our customers of the group's contracts (locked by the batch: they cannot change).
        ours = [row[0] for row in self._query(self._OUR_CUSTOMERS, {"group": [ref.id for ref in group]})]
        locks = [(_PROCESSOR_CUSTOMER_LOCK, customer_ref)] + [(_CONTRACT_CUSTOMER_LOCK, c) for c in ours]
        with self._locked(locks):
            params = {
                "customer": customer_ref,
                "decided": self.decided,
                "ours": ours,
                "logical_date": self.logical_date,
            }
            yield self._query(self._CUSTOMER_IN_USE, params).fetchone()[0]

    @contextmanager
    def _locked(self, locks: list[tuple[str, object]]):
        """These locks, exclusive, at session level: they end with the call, not with the
        batch's transaction (a write waits for one call, never for a whole batch). Tried, never
        waited for inside PostgreSQL: a writer holding one may itself wait for a row of our
        batch, and neither would give way. After CUSTOMER_LOCK_WAIT_S: ProcessorError, the rows
        wait for the next run."""
        deadline = time.monotonic() + CUSTOMER_LOCK_WAIT_S
        while True:
            taken = []
            for key, value in locks:
                if not self.conn.execute(f"SELECT pg_try_advisory_lock({key})", (value,)).fetchone()[0]:
                    break
                taken.append((key, value))
            if len(taken) == len(locks):
                break
            self._unlock(taken)
            if time.monotonic() >= deadline:
                raise ProcessorError(f"processor customer busy (locked by a write for {CUSTOMER_LOCK_WAIT_S:.0f}s)")
            time.sleep(0.05)
        try:
            yield
        finally:
            self._unlock(taken)

    def _unlock(self, locks: list[tuple[str, object]]) -> None:
        from psycopg.pq import TransactionStatus

        # In a failed transaction the unlock cannot run: the engine then rolls back and closes
        # the connection, which ends the locks.
        if self.conn.info.transaction_status != TransactionStatus.INERROR:
            for key, value in locks:
                self.conn.execute(f"SELECT pg_advisory_unlock({key})", (value,))


class StripeEraser:
    """Detach payment methods and delete customers with the official client (``StripeClient``)."""

    def __init__(self, client, parallel_customers: int = 1):
        self.client = client
        self.parallel_customers = parallel_customers

    @classmethod
    def from_connection(cls, conn_id: str = STRIPE_CONN_ID) -> StripeEraser:
        import stripe
        from airflow.sdk import BaseHook

        quiet_client_logs()
        conn = BaseHook.get_connection(conn_id)
        if not conn.password:
            raise ProcessorError(f"connection {conn_id!r} has no API key (password)")
        extra = conn.extra_dejson or {}
        options = {
            "max_network_retries": int(extra.get("max_network_retries", DEFAULT_RETRIES)),
            "http_client": stripe.RequestsClient(timeout=float(extra.get("timeout", DEFAULT_TIMEOUT_S))),
        }
        if conn.host:  # the real API when empty
            base = conn.host if "://" in conn.host else f"https://{conn.host}"
            if conn.port and "://" not in conn.host:
                base += f":{conn.port}"
            options["base_addresses"] = {"api": base.rstrip("/")}
        parallel = max(1, int(extra.get("parallel_customers", PARALLEL_CUSTOMERS)))
        return cls(stripe.StripeClient(conn.password, **options), parallel)

    def detach(self, method_ref: str) -> None:
        self._call(lambda: self.client.v1.payment_methods.detach(method_ref), already_done=_already_detached)

    def delete_customer(self, customer_ref: str) -> None:
        self._call(lambda: self.client.v1.customers.delete(customer_ref), already_done=lambda exc: False)

    def _call(self, request, already_done) -> None:
        import stripe

        try:
            request()
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404 and exc.code == "resource_missing":
                return  # already erased: the goal is reached
            if already_done(exc):
                return
            raise ProcessorError(_describe(exc)) from None
        except stripe.StripeError as exc:  # 5xx / timeouts after the retries, auth, rate limits
            raise ProcessorError(_describe(exc)) from None

    def erase(self, refs: list[PaymentReference], decision: Decision | None = None) -> ErasureResult:
        """Per processor customer (``parallel_customers`` of them at once): detach each method still
        wanted (``decision``); then delete the customer when still wanted and every detach was
        confirmed. A failed customer deletion keeps all that customer's rows (the next run
        detaches again, a no-op, and retries the deletion)."""
        decision = decision or Decision()
        by_customer: dict[str, list[PaymentReference]] = defaultdict(list)
        for ref in refs:
            by_customer[ref.customer_ref].append(ref)
        customers = list(by_customer.items())
        if self.parallel_customers <= 1 or len(customers) <= 1:
            done = [self._erase_customer(customer_ref, group, decision) for customer_ref, group in customers]
        else:
            with ThreadPoolExecutor(max_workers=min(self.parallel_customers, len(customers))) as pool:
                done = list(pool.map(lambda item: self._erase_customer(*item, decision), customers))
        result = ErasureResult()
        for one in done:  # in the customers' order, whatever the order of the answers
            result.add(one)
        return result

    def _erase_customer(self, customer_ref: str, group: list[PaymentReference], decision: Decision) -> ErasureResult:
        """One processor customer's calls, in order: its methods detached, then the customer."""
        result = ErasureResult()
        detached = []
        for ref in group:
            try:
                with decision.before_detach(ref) as in_use:
                    if in_use:  # our row goes; the card stays with the row that uses it
                        result.counts["methods_kept_in_use"] += 1
                    else:
                        self.detach(ref.method_ref)
                        result.counts["methods_detached"] += 1
                detached.append(ref.id)
            except ProcessorError as exc:
                result.failed[ref.id] = f"detach: {exc}"
        if len(detached) == len(group):
            try:
                with decision.before_customer_deletion(customer_ref, group) as in_use:
                    if in_use:
                        result.counts["customers_kept"] += 1
                    else:
                        self.delete_customer(customer_ref)
                        result.counts["customers_deleted"] += 1
            except ProcessorError as exc:
                for ref_id in detached:
                    result.failed[ref_id] = f"customer deletion: {exc}"
                return result
        result.confirmed += detached
        return result


def _already_detached(exc) -> bool:
    """Detaching a payment method that is attached to no customer is refused with a 400
    ("not attached to a customer"): it was detached before, which is what we want."""
    return exc.http_status == 400 and "not attached" in (exc.user_message or str(exc) or "")


def _describe(exc) -> str:
    return f"{type(exc).__name__} (HTTP {getattr(exc, 'http_status', None)}, code {getattr(exc, 'code', None)})"


# Processor object ids: customers, payment methods, cards, sources, bank accounts, setup intents.
_PROCESSOR_ID = re.compile(r"\b(pm|cus|card|src|ba|seti)_[A-Za-z0-9]+")


class _MaskProcessorIds(logging.Filter):
    """Masks processor ids in what the client's loggers still let through (its warnings;
    urllib3's DEBUG line naming each request path)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _PROCESSOR_ID.sub(r"\1_***", message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def quiet_client_logs() -> None:
    """The official client logs every request at INFO (``Request to Stripe api ...
    url=.../v1/customers/cus_...``): task logs hold counts only, so its logger is raised to
    WARNING, and processor ids are masked in whatever it and urllib3 (the HTTP layer, at DEBUG)
    still log. (``STRIPE_LOG=info`` in the environment makes the client print the same lines to
    stderr, past any logger: never set it for the workers.)"""
    logging.getLogger("stripe").setLevel(logging.WARNING)
    for name in ("stripe", "urllib3.connectionpool"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _MaskProcessorIds) for f in logger.filters):
            logger.addFilter(_MaskProcessorIds())


_REFERENCES_SQL = """
SELECT pm.id, pm.processor_customer_ref, pm.processor_method_ref, true
FROM {schema}.payment_methods AS pm
WHERE pm.id = ANY(%(ids)s::bigint[])
ORDER BY pm.id
"""


def payment_references(conn, ids: list[int], schema: str = "app") -> list[PaymentReference]:
    """The rows' processor references; whether each call is still wanted is decided later, under
    the customer's lock (CurrentState)."""
    rows = conn.execute(_REFERENCES_SQL.format(schema=schema), {"ids": ids}).fetchall()
    return [PaymentReference(*row) for row in rows]


def erase_rows(
    conn,
    ids: list[int],
    logical_date: dt.datetime,
    *,
    eraser: StripeEraser | None = None,
    schema: str = "app",
) -> ErasureResult:
    """Erase the payment methods of these app.payment_methods rows at the processor, each call
    re-decided on the current state (CurrentState). Call it with the rows locked."""
    if not ids:
        return ErasureResult()
    refs = payment_references(conn, ids, schema)
    try:
        eraser = eraser or StripeEraser.from_connection()
    except Exception as exc:  # no connection, no key, no client: nothing is confirmed
        reason = f"no processor client: {type(exc).__name__}"
        log.error("payment processor unavailable (%s): %d payment reference rows kept", reason, len(ids))
        return ErasureResult(failed=dict.fromkeys(ids, reason))
    result = eraser.erase(refs, CurrentState(conn, [ref.id for ref in refs], logical_date, schema))
    missing = set(ids) - {ref.id for ref in refs}  # not found under lock: leave them to the engine
    result.failed.update(dict.fromkeys(missing, "row not found"))
    log.info("payment processor: %s", dict(sorted(result.counts.items())) or "no call")
    if result.failed:
        log.warning(
            "payment processor did not confirm %d erasures, rows kept: %s",
            len(result.failed),
            sorted(result.failed.items())[:20],
        )
    return result


def erase_payment_methods(
    conn, ids: list[int], logical_date: dt.datetime, *, eraser: StripeEraser | None = None, schema: str = "app"
) -> tuple[list[int], dict[int, str]]:
    """Erase the payment methods of these app.payment_methods rows at the processor; return
    (ids the processor confirmed, {id: reason} for the others). Call it with the rows locked."""
    result = erase_rows(conn, ids, logical_date, eraser=eraser, schema=schema)
    return sorted(result.confirmed), result.failed


def erase_before_delete(conn, schema: str, ctx, groups: list, outcome) -> list:
    """The engine's hook for a rule flagged ``erase_at_processor``: erase the batch's rows at
    the processor, drop the unconfirmed ones from the batch's groups and report them as waiting;
    what was done at the processor is counted in ``outcome.processor``."""
    ids = [i for _, group_ids, _ in groups for i in group_ids]
    result = erase_rows(conn, ids, ctx.logical_date, schema=schema)
    for key, n in result.counts.items():
        outcome.processor[key] = outcome.processor.get(key, 0) + n
    if result.failed:
        outcome.waiting[WAITING_ON] = outcome.waiting.get(WAITING_ON, 0) + len(result.failed)
        outcome.waiting_ids += sorted(result.failed)
    keep = set(result.confirmed)
    kept_groups = [(month, [i for i in group_ids if i in keep], after) for month, group_ids, after in groups]
    return [group for group in kept_groups if group[1]]
