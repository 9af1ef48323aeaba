"""What may be erased of a subject's records, decided per record from the policy; when in doubt
the record stays and is reported (the project's first promise: never delete a record that must
be kept). Each record is reported with its purpose, its legal basis and its own end date
(retention.rights.ends).

- kept: a record under a legal hold; a record whose legal basis (its rule's, else its
  purpose's) is a legal obligation (Art. 17(3)(b)); a purpose the policy marks
  ``on_erasure_request: keep`` (overriding grounds: fraud prevention); a record still needed
  for a running contract (its clock not started); a record whose rule keeps a probative
  archive (Art. 17(3)(e): archived on schedule and kept there until its purge date); a payment
  reference (erased at the processor by its purpose's run); an object under Object Lock; a
  live row no rule of the policy describes; a row a kept row references
  (retention.rights.erase finds that one when its delete fails, or before it when a key that
  cascades would take the kept row along);
- erased: the rest.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, replace

from retention.policy import Policy, Rule, rule_filter
from retention.policy.coverage import covered_records_sql
from retention.rights.context import RequestContext
from retention.rights.ends import own_end
from retention.rights.find import ArchivedObject

# Why a record is kept, in the report (most binding first: a record kept for several reasons
# is reported under the first).
KEPT_BECAUSE = {
    "legal_hold": "under a legal hold (Art. 17(3)(e), legal claims)",
    "legal_obligation": "kept for a legal obligation (Art. 17(3)(b))",
    "overriding_grounds": "overriding legitimate grounds declared in the policy (Art. 17(1)(c), 21(1))",
    "payment_processor": "payment reference: erased at the processor first, by its purpose's run",
    "running_contract": "needed for a running contract (its retention clock has not started)",
    "probative_archive": "kept as evidence for legal claims in the probative archive (Art. 17(3)(e))",
    "object_lock": "archive object under Object Lock until its purge date",
    "owners_not_recorded": "archived before owners were recorded: run retention.archive.backfill_owners, then the request again",
    "referenced_by_kept_row": "a record that is kept references it",
    "clock_not_started": "its retention period has not started (no rule selects it yet): decide by hand",
    "no_rule": "no rule of the retention policy describes this record: decide by hand",
}


@dataclass(frozen=True)
class Decision:
    """One record's fate under the policy: erased, or kept and why."""

    erase: bool
    reason: str  # 'erasable' or a key of KEPT_BECAUSE
    purpose: str | None = None
    rule: str | None = None
    until: str | None = None  # the record's own end: an ISO date, or the policy's words while its clock is NULL


def basis(policy: Policy, purpose_name: str, rule_name: str | None) -> str:
    """The rule's legal basis where the policy gives one, else its purpose's."""
    purpose = policy.purpose(purpose_name)
    rule = next((r for r in purpose.rules if r.name == rule_name), None)
    return (rule.legal_basis if rule else None) or purpose.legal_basis


def _rules_of(policy: Policy, table: str) -> list[tuple[str, Rule]]:
    # The rules written in the policy decide; those generated from `dependents` only schedule
    # a child with its parent.
    return [(name, rule) for name, p in policy.purposes.items() for rule in p.schedule_rules if rule.table == table]


def _decide(ctx: RequestContext, purpose_name: str, rule: Rule, clock: dt.datetime | None, held: bool) -> Decision:
    """One record under one rule: erase, or keep and why (see the module's docstring)."""
    purpose = ctx.policy.purpose(purpose_name)
    bases = set(basis(ctx.policy, purpose_name, rule.name).split("_and_"))
    until = own_end(rule, clock, ctx.tz)
    if held:
        reason = "legal_hold"
    elif "legal_obligation" in bases:
        reason = "legal_obligation"
    elif purpose.on_erasure_request == "keep":
        reason = "overriding_grounds"
    elif rule.erase_at_processor:
        reason = "payment_processor"
    elif clock is None and "contract" in bases:
        reason = "running_contract"
    elif rule.tier == "probative":
        reason = "probative_archive"
    else:
        return Decision(True, "erasable", purpose_name, rule.name, until)
    return Decision(False, reason, purpose_name, rule.name, until)


def classify_live(ctx: RequestContext, conn, live: dict[str, set[int]]) -> dict[tuple[str, int], Decision]:
    """Per live row: the rules whose filter matches it (its clock ignored) decide; the most
    binding reason to keep wins; a row no rule matches is kept."""
    covered = set()
    if live:
        covered = {
            (t, i)
            for t, i in conn.execute(
                f"WITH covered AS ({covered_records_sql(ctx.policy)})"
                " SELECT table_name, record_id FROM covered WHERE table_name = ANY(%s)",
                (sorted(live),),
            )
        }
    decisions: dict[tuple[str, int], list[Decision]] = defaultdict(list)
    for table, ids in live.items():
        for purpose_name, rule in _rules_of(ctx.policy, table):
            filt = rule_filter(ctx.policy, purpose_name, rule)
            query = (
                f'SELECT "{table}".id, {rule.clock} FROM "{ctx.schema}"."{table}" AS "{table}" {filt.joins}'
                f' WHERE "{table}".id = ANY(%s::bigint[])' + (f" AND ({filt.where})" if filt.where else "")
            )
            for rid, clock in conn.execute(query, (sorted(ids),)):
                decisions[(table, rid)].append(_decide(ctx, purpose_name, rule, clock, (table, rid) in covered))
        # A row no rule selects yet because its clock has not started under a rule of its
        # table (an identity document not checked yet, an information request still open):
        # that rule's purpose and basis, kept until the clock starts. Never erased on this
        # ground alone: no rule selects it.
        unmatched = sorted(i for i in ids if (table, i) not in decisions)
        for purpose_name, rule in _rules_of(ctx.policy, table) if unmatched else ():
            filt = rule_filter(ctx.policy, purpose_name, rule)
            query = (
                f'SELECT "{table}".id FROM "{ctx.schema}"."{table}" AS "{table}" {filt.joins}'
                f' WHERE "{table}".id = ANY(%s::bigint[]) AND {rule.clock} IS NULL'
            )
            for (rid,) in conn.execute(query, (unmatched,)):
                d = _decide(ctx, purpose_name, rule, None, (table, rid) in covered)
                decisions[(table, rid)].append(replace(d, erase=False, reason="clock_not_started") if d.erase else d)
    out = {}
    for table, ids in live.items():
        for rid in ids:
            out[(table, rid)] = _strongest(decisions.get((table, rid)), held=(table, rid) in covered)
    return out


def classify_object(ctx: RequestContext, obj: ArchivedObject) -> Decision:
    """An archived record: probative and restricted objects stay until their purge date, as
    do held and locked ones; intermediate ones are rewritten without the subject's rows.
    No "until": each row has its own (``obj.until``)."""
    until = None
    bases = set(basis(ctx.policy, obj.purpose, obj.rule).split("_and_"))
    locked = ctx.store.storage.tiers[obj.tier].object_lock if obj.tier in ctx.store.storage.tiers else True
    if obj.held:
        reason = "legal_hold"
    elif obj.owner_ids is None:
        reason = "owners_not_recorded"
    elif "legal_obligation" in bases:
        reason = "legal_obligation"
    elif ctx.policy.purpose(obj.purpose).on_erasure_request == "keep":
        reason = "overriding_grounds"
    elif obj.tier != "intermediate":
        reason = "probative_archive"
    elif locked:
        reason = "object_lock"
    else:
        return Decision(True, "erasable", obj.purpose, obj.rule, until)
    return Decision(False, reason, obj.purpose, obj.rule, until)


_PRIORITY = list(KEPT_BECAUSE)


def _strongest(decisions: list[Decision] | None, held: bool) -> Decision:
    if not decisions:
        return Decision(False, "legal_hold" if held else "no_rule")
    kept = [d for d in decisions if not d.erase]
    if kept:
        return min(kept, key=lambda d: _PRIORITY.index(d.reason))
    return decisions[0]
