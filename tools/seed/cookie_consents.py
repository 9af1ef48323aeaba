"""The cookie_consents purpose (include/sql/cookie_consents/): the proof of a visitor's cookie
choices, the rule that removes it, and a customer's choices.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tools.seed.builder import Builder
from tools.seed.dates import RuleClock
from tools.seed.prospects import Customer, activity_since, activity_until
from tools.seed.rows import Row, kept_id

COOKIE_CONSENT_SHARE = 0.6
USER_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) Firefox/125.0",
    "Mozilla/5.0 (Linux; Android 14) Chrome/124.0 Mobile Safari/537.36",
)


@dataclass(slots=True, kw_only=True, eq=False)
class CookieConsent(Row):
    TABLE = "cookie_consents"
    COLUMNS = ("id", "visitor_id", "customer_id", "choice", "analytics", "advertising", "social_networks",
               "personalisation", "recorded_at", "ip_truncated", "user_agent")  # fmt: skip

    visitor_id: str
    customer: Customer | None
    choice: str
    analytics: bool
    advertising: bool
    social_networks: bool
    personalisation: bool
    recorded_at: dt.datetime
    ip_truncated: str
    user_agent: str

    # No parents(): ON DELETE SET NULL, the proof of a choice is about a browser.
    def values(self) -> tuple[Any, ...]:
        return (self.id, self.visitor_id, kept_id(self.customer), self.choice, self.analytics,
                self.advertising, self.social_networks, self.personalisation, self.recorded_at,
                self.ip_truncated, self.user_agent)  # fmt: skip


RULE_CLOCKS: dict[str, RuleClock] = {
    "cookie_choices": RuleClock("cookie_consents", lambda c: c.recorded_at),
}


def cookie_consent(gen: Builder, recorded_at: dt.datetime, customer: Customer | None = None) -> CookieConsent:
    choice = gen.weighted(("accepted_all", "refused_all", "customised"), (55, 30, 15))
    picks = [choice == "accepted_all" or (choice == "customised" and gen.rng.random() < 0.5) for _ in range(4)]
    return gen.new(
        CookieConsent,
        visitor_id=gen.token("ax_", 20),
        customer=customer,
        choice=choice,
        analytics=picks[0],
        advertising=picks[1],
        social_networks=picks[2],
        personalisation=picks[3],
        recorded_at=recorded_at,
        ip_truncated=f"{gen.integer(2, 223)}.{gen.integer(0, 256)}.{gen.integer(0, 256)}.0",
        user_agent=gen.pick(USER_AGENTS),
    )


def customer_activity(gen: Builder, customer: Customer) -> None:
    until = activity_until(gen, customer)
    if gen.rng.random() < COOKIE_CONSENT_SHARE and (since := activity_since(gen, "cookie_choices", 0, customer)):
        cookie_consent(gen, gen.between(since, until), customer)
