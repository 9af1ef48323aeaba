"""The job_applications purpose (include/sql/job_applications/): candidates, and the rule that
removes those not recruited (a hired candidate is kept whatever the age).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tools.seed.builder import Builder
from tools.seed.dates import RuleClock
from tools.seed.rows import Row

POSITIONS = (
    "Chargé(e) de clientèle", "Gestionnaire sinistres", "Vétérinaire conseil", "Data engineer",
    "Développeur backend", "Product manager", "Juriste", "Chargé(e) de conformité", "Commercial(e)",
)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class JobApplication(Row):
    TABLE = "job_applications"
    COLUMNS = ("id", "first_name", "last_name", "email", "phone", "city", "position", "applied_at",
               "last_contact_at", "hired", "cv_key")  # fmt: skip

    first_name: str
    last_name: str
    email: str
    phone: str
    city: str
    position: str
    applied_at: dt.datetime
    last_contact_at: dt.datetime
    hired: bool
    cv_key: str | None

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.first_name, self.last_name, self.email, self.phone, self.city,
                self.position, self.applied_at, self.last_contact_at, self.hired, self.cv_key)  # fmt: skip


RULE_CLOCKS: dict[str, RuleClock] = {
    "candidates_not_recruited": RuleClock("job_applications", lambda j: None if j.hired else j.last_contact_at),
}


def job_application(
    gen: Builder, *, hired: bool | None = None, last_contact_at: dt.datetime | None = None
) -> JobApplication:
    if hired is None:
        hired = gen.rng.random() < 0.10
    if last_contact_at is None:
        if hired:  # hired candidates are kept whatever their age
            last_contact_at = gen.between(gen.history_start, gen.snapshot - dt.timedelta(days=30))
        else:
            last_contact_at = gen.between(gen.retention.kept_since("candidates_not_recruited"), gen.snapshot)
    _, first_name, last_name = gen.person()
    application_id = gen.take_id(JobApplication)
    application = JobApplication(
        id=application_id,
        first_name=first_name,
        last_name=last_name,
        email=gen.email(first_name, last_name),
        phone=gen.phone(),
        city=gen.pick(gen.pools.places)[1],
        position=gen.pick(POSITIONS),
        applied_at=last_contact_at - gen.days(0, 90),
        last_contact_at=last_contact_at,
        hired=hired,
        cv_key=f"cvs/{application_id}.pdf" if gen.rng.random() < 0.95 else None,
    )
    gen.add(application)
    return application
