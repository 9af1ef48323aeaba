"""The fraud purpose (include/sql/fraud/): alerts raised on a contract, the cases a relevant one
opens, the four rules that remove them, and the alerts a contract raises while it runs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tools.seed.builder import Builder
from tools.seed.contracts import Contract
from tools.seed.dates import RuleClock
from tools.seed.rows import Row

ALERTS_PER_CONTRACT_YEAR = 0.08
ALERT_HISTORY_DAYS = 3 * 365  # older alerts are long gone (their cases too)
FRAUD_RULES = {
    "FRD-DUP-INVOICE": "Facture vétérinaire déjà présentée sur un autre dossier",
    "FRD-EARLY-CLAIM": "Sinistre déclaré moins de 30 jours après la souscription",
    "FRD-AMOUNT-OUTLIER": "Montant très supérieur au tarif habituel de la clinique",
    "FRD-IBAN-CHANGE": "Changement d'IBAN juste avant un remboursement important",
    "FRD-CLINIC-LINK": "Clinique liée à plusieurs dossiers signalés",
}
FRAUD_RULE_CODES = tuple(FRAUD_RULES)
CASE_SUMMARIES = (
    "Factures falsifiées, remboursements indus récupérés",
    "Doublon de facture confirmé avec un autre assureur",
    "Soupçon non confirmé après contrôle de la clinique",
    "Sinistre antérieur à la souscription, contrat résilié",
)
CASE_OUTCOMES = ("fraud_confirmed", "unfounded", "settled")


@dataclass(slots=True, kw_only=True, eq=False)
class FraudCase(Row):
    TABLE = "fraud_cases"
    COLUMNS = ("id", "status", "opened_at", "closed_at", "outcome", "summary")

    opened_at: dt.datetime
    closed_at: dt.datetime | None
    outcome: str | None
    summary: str

    def values(self) -> tuple[Any, ...]:
        status = "open" if self.closed_at is None else "closed"
        return (self.id, status, self.opened_at, self.closed_at, self.outcome, self.summary)


@dataclass(slots=True, kw_only=True, eq=False)
class FraudAlert(Row):
    TABLE = "fraud_alerts"
    COLUMNS = ("id", "contract_id", "raised_at", "rule_code", "details", "status", "qualified_at",
               "fraud_case_id")  # fmt: skip

    contract: Contract
    raised_at: dt.datetime
    rule_code: str
    details: str
    status: str
    qualified_at: dt.datetime | None = None
    fraud_case: FraudCase | None = None

    def parents(self) -> tuple[Row, ...]:
        return (self.contract, self.fraud_case) if self.fraud_case else (self.contract,)

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.contract.id, self.raised_at, self.rule_code, self.details,
                self.status, self.qualified_at, self.fraud_case.id if self.fraud_case else None)  # fmt: skip


RULE_CLOCKS: dict[str, RuleClock] = {
    "unqualified_alerts": RuleClock("fraud_alerts", lambda a: a.raised_at if a.status == "pending" else None),
    "not_relevant_alerts": RuleClock("fraud_alerts", lambda a: a.qualified_at if a.status == "not_relevant" else None),
    "relevant_alerts": RuleClock("fraud_alerts", lambda a: a.fraud_case.closed_at if a.status == "relevant" else None),
    "closed_fraud_cases": RuleClock("fraud_cases", lambda c: c.closed_at),
}


def alert(
    gen: Builder,
    contract: Contract,
    raised_at: dt.datetime,
    status: str,
    qualified_at: dt.datetime | None = None,
    fraud_case: FraudCase | None = None,
) -> FraudAlert:
    rule_code = gen.pick(FRAUD_RULE_CODES)
    return gen.new(
        FraudAlert,
        contract=contract,
        raised_at=raised_at,
        rule_code=rule_code,
        details=FRAUD_RULES[rule_code],
        status=status,
        qualified_at=qualified_at,
        fraud_case=fraud_case,
    )


def new_fraud_case(gen: Builder, opened_at: dt.datetime, closed_at: dt.datetime | None) -> FraudCase:
    return gen.new(
        FraudCase,
        opened_at=opened_at,
        closed_at=closed_at,
        outcome=gen.pick(CASE_OUTCOMES) if closed_at else None,
        summary=gen.pick(CASE_SUMMARIES),
    )


def random_alerts(gen: Builder, contract: Contract) -> None:
    """Alerts raised while the contract ran: qualified within weeks (a few never are),
    mostly not relevant; a relevant one opens a case that stays open for months."""
    since = max(contract.started_at, gen.snapshot - dt.timedelta(days=ALERT_HISTORY_DAYS))
    until = min(contract.ended_at or gen.snapshot, gen.snapshot)
    if until <= since:
        return
    years = (until - since).days / 365
    for _ in range(gen.poisson(ALERTS_PER_CONTRACT_YEAR * years)):
        raised_at = gen.between(since, until)
        qualified_at = raised_at + gen.days(1, 60)
        roll = gen.rng.random()
        if roll < 0.08 or qualified_at >= gen.snapshot:
            alert(gen, contract, raised_at, "pending")
        elif roll < 0.80:
            alert(gen, contract, raised_at, "not_relevant", qualified_at)
        else:
            closed_at = qualified_at + gen.days(90, 900)
            case = new_fraud_case(gen, qualified_at, closed_at if closed_at < gen.snapshot else None)
            alert(gen, contract, raised_at, "relevant", qualified_at, case)
