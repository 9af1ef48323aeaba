"""The aml purpose (include/sql/aml/): the anti-money-laundering check made when a contract is
signed, and the rule that removes it once its contract has ended.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tools.seed.builder import Builder
from tools.seed.contracts import Contract
from tools.seed.dates import RuleClock
from tools.seed.prospects import Customer
from tools.seed.rows import Row


@dataclass(slots=True, kw_only=True, eq=False)
class AmlRecord(Row):
    TABLE = "aml_records"
    COLUMNS = ("id", "customer_id", "contract_id", "checked_at", "risk_level", "pep",
               "sanctions_hit", "id_document_no", "document_key")  # fmt: skip

    customer: Customer
    contract: Contract
    checked_at: dt.datetime
    risk_level: str
    pep: bool
    sanctions_hit: bool
    id_document_no: str
    document_key: str | None

    def parents(self) -> tuple[Row, ...]:
        return (self.customer, self.contract)

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.customer.id, self.contract.id, self.checked_at, self.risk_level,
                self.pep, self.sanctions_hit, self.id_document_no, self.document_key)  # fmt: skip


RULE_CLOCKS: dict[str, RuleClock] = {
    "aml_records": RuleClock("aml_records", lambda a: a.contract.ended_at),
}


def aml_check(gen: Builder, contract: Contract) -> AmlRecord:
    aml_id = gen.take_id(AmlRecord)
    record = AmlRecord(
        id=aml_id,
        customer=contract.customer,
        contract=contract,
        checked_at=contract.started_at + gen.days(0, 0.1),
        risk_level=gen.weighted(("low", "medium", "high"), (85, 12, 3)),
        pep=gen.rng.random() < 0.01,
        sanctions_hit=gen.rng.random() < 0.002,
        id_document_no=f"{gen.digits(2)}{gen.token('', 2).upper()}{gen.digits(5)}",
        document_key=f"aml/{aml_id}.pdf" if gen.rng.random() < 0.4 else None,
    )
    gen.add(record)
    return record
