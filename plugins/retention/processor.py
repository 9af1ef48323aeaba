"""Erasure at the payment processor (Stripe) before our payment reference rows are deleted.

The policy: card and IBAN data "sont conservées par notre prestataire de service de paiement
Stripe jusqu'à la fin de votre abonnement". When the contracts purpose deletes
``app.payment_methods`` rows (rule ``payment_references``, tier none, flagged
``erase_at_processor: stripe`` in the policy file), each row's payment method is first
erased at the processor through its API, with the official ``stripe`` client pointed at the
Airflow connection ``stripe_default`` (host = API base URL, password = secret key; extra
``max_network_retries``, ``timeout``):

- detach the payment method (``POST /v1/payment_methods/{pm}/detach``);
- delete the processor customer (``DELETE /v1/customers/{cus}``) once no row of ours still
  references it and no contract of that customer still runs (a held, waiting or running
  payment method keeps the processor customer too).

Idempotent: an object already gone (404 ``resource_missing``) or a payment method already
detached counts as erased, so a re-run after a crash between the processor's answer and our
commit is safe. Retried by the client on 5xx, 409, connection errors and timeouts
(``max_network_retries``, exponential backoff, idempotency keys on POST). A row whose erasure
the processor did not confirm stays in our database and is reported (``waiting`` on
``payment_processor`` in the run's outcome; the after-gate then names the rows left): it is
retried by the next run.

The narrow interface: ``erase_payment_methods(conn, ids, logical_date) -> (confirmed, failed)``.
Nothing here logs processor references or personal data: row ids and error classes only.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

STRIPE_CONN_ID = "stripe_default"
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT_S = 20.0
WAITING_ON = "payment_processor"  # how unconfirmed rows show in the run's outcome


class ProcessorError(Exception):
    """The processor did not confirm an erasure (after the client's retries)."""


@dataclass(frozen=True)
class PaymentReference:
    """One row of app.payment_methods about to be deleted, and what its erasure needs."""

    id: int
    customer_ref: str
    method_ref: str
    # No other row of ours references the processor customer and none of the customer's
    # contracts still runs: the processor customer goes too.
    delete_customer: bool


@dataclass
class ErasureResult:
    confirmed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # row id -> reason (no personal data)


class StripeEraser:
    """Detach payment methods and delete customers with the official client (``StripeClient``)."""

    def __init__(self, client):
        self.client = client

    @classmethod
    def from_connection(cls, conn_id: str = STRIPE_CONN_ID) -> StripeEraser:
        import stripe
        from airflow.sdk import BaseHook

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
        return cls(stripe.StripeClient(conn.password, **options))

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

    def erase(self, refs: list[PaymentReference]) -> ErasureResult:
        """Per processor customer: detach each method; then delete the customer when asked and
        every detach was confirmed. A failed customer deletion keeps all that customer's rows
        (the next run detaches again, a no-op, and retries the deletion)."""
        result = ErasureResult()
        by_customer: dict[str, list[PaymentReference]] = defaultdict(list)
        for ref in refs:
            by_customer[ref.customer_ref].append(ref)
        for customer_ref, group in by_customer.items():
            detached = []
            for ref in group:
                try:
                    self.detach(ref.method_ref)
                    detached.append(ref.id)
                except ProcessorError as exc:
                    result.failed[ref.id] = f"detach: {exc}"
            if any(ref.delete_customer for ref in group) and len(detached) == len(group):
                try:
                    self.delete_customer(customer_ref)
                except ProcessorError as exc:
                    for ref_id in detached:
                        result.failed[ref_id] = f"customer deletion: {exc}"
                    continue
            result.confirmed += detached
        return result


def _already_detached(exc) -> bool:
    """Detaching a payment method that is attached to no customer is refused with a 400
    ("not attached to a customer"): it was detached before, which is what we want."""
    return exc.http_status == 400 and "not attached" in (exc.user_message or str(exc) or "")


def _describe(exc) -> str:
    return f"{type(exc).__name__} (HTTP {getattr(exc, 'http_status', None)}, code {getattr(exc, 'code', None)})"


_REFERENCES_SQL = """
SELECT pm.id, pm.processor_customer_ref, pm.processor_method_ref,
       NOT EXISTS (
           SELECT 1 FROM {schema}.payment_methods AS other
           WHERE other.processor_customer_ref = pm.processor_customer_ref AND other.id <> ALL(%(ids)s::bigint[]))
       AND NOT EXISTS (
           SELECT 1 FROM {schema}.contracts AS mine
           JOIN {schema}.contracts AS theirs ON theirs.customer_id = mine.customer_id
           WHERE mine.id = pm.contract_id AND (theirs.ended_at IS NULL OR theirs.ended_at > %(logical_date)s))
FROM {schema}.payment_methods AS pm
WHERE pm.id = ANY(%(ids)s::bigint[])
ORDER BY pm.id
"""


def payment_references(conn, ids: list[int], logical_date: dt.datetime, schema: str = "app") -> list[PaymentReference]:
    rows = conn.execute(_REFERENCES_SQL.format(schema=schema), {"ids": ids, "logical_date": logical_date}).fetchall()
    return [PaymentReference(*row) for row in rows]


def erase_payment_methods(
    conn, ids: list[int], logical_date: dt.datetime, *, eraser: StripeEraser | None = None, schema: str = "app"
) -> tuple[list[int], dict[int, str]]:
    """Erase the payment methods of these app.payment_methods rows at the processor; return
    (ids the processor confirmed, {id: reason} for the others). Call it with the rows locked."""
    if not ids:
        return [], {}
    refs = payment_references(conn, ids, logical_date, schema)
    try:
        eraser = eraser or StripeEraser.from_connection()
    except Exception as exc:  # no connection, no key, no client: nothing is confirmed
        reason = f"no processor client: {type(exc).__name__}"
        log.error("payment processor unavailable (%s): %d payment reference rows kept", reason, len(ids))
        return [], dict.fromkeys(ids, reason)
    result = eraser.erase(refs)
    missing = set(ids) - {ref.id for ref in refs}  # not found under lock: leave them to the engine
    result.failed.update(dict.fromkeys(missing, "row not found"))
    if result.failed:
        log.warning(
            "payment processor did not confirm %d erasures, rows kept: %s",
            len(result.failed),
            sorted(result.failed.items())[:20],
        )
    return sorted(result.confirmed), result.failed


def erase_before_delete(conn, schema: str, ctx, groups: list, outcome) -> list:
    """The engine's hook for a rule flagged ``erase_at_processor``: erase the batch's rows at
    the processor, drop the unconfirmed ones from the batch's groups and report them as waiting."""
    ids = [i for _, group_ids, _ in groups for i in group_ids]
    confirmed, failed = erase_payment_methods(conn, ids, ctx.logical_date, schema=schema)
    if failed:
        outcome.waiting[WAITING_ON] = outcome.waiting.get(WAITING_ON, 0) + len(failed)
        outcome.waiting_ids += sorted(failed)
    keep = set(confirmed)
    kept_groups = [(month, [i for i in group_ids if i in keep], after) for month, group_ids, after in groups]
    return [group for group in kept_groups if group[1]]
