"""The call_recordings purpose (include/sql/call_recordings/): recorded calls (sales, quality,
claims) and their quality analyses, the three rules that remove them, and a customer's support
calls.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from tools.seed.builder import Builder
from tools.seed.dates import RuleClock
from tools.seed.prospects import Customer, touch
from tools.seed.rows import Row

SUPPORT_CALLS_PER_CUSTOMER_YEAR = 0.5
ANALYSED_CALL_SHARE = 0.25
ANALYSIS_SUMMARIES = (
    "Discours conforme, informations précontractuelles données",
    "Délai d'attente trop long, client mécontent",
    "Conseiller courtois, réponse complète sur les garanties",
    "Rappel nécessaire : pièces justificatives manquantes",
    "Réclamation sur le montant du remboursement",
)


@dataclass(slots=True, kw_only=True, eq=False)
class CallRecording(Row):
    TABLE = "call_recordings"
    COLUMNS = ("id", "customer_id", "phone_number", "reason", "started_at", "duration_s",
               "agent_name", "audio_key")  # fmt: skip

    customer: Customer | None
    phone_number: str
    reason: str
    started_at: dt.datetime
    duration_s: int
    agent_name: str
    audio_key: str | None

    def parents(self) -> tuple[Row, ...]:
        return (self.customer,) if self.customer else ()

    def values(self) -> tuple[Any, ...]:
        return (self.id, self.customer.id if self.customer else None, self.phone_number,
                self.reason, self.started_at, self.duration_s, self.agent_name, self.audio_key)  # fmt: skip


@dataclass(slots=True, kw_only=True, eq=False)
class CallAnalysis(Row):
    TABLE = "call_analyses"
    COLUMNS = ("id", "call_recording_id", "created_at", "analyst", "score", "summary", "document_key")

    call_recording: CallRecording
    created_at: dt.datetime
    analyst: str
    score: int
    summary: str
    document_key: str | None

    # No parents(): the foreign key is ON DELETE SET NULL, an analysis outlives its recording.
    def values(self) -> tuple[Any, ...]:
        recording_id = self.call_recording.id if self.call_recording.kept else None
        return (self.id, recording_id, self.created_at, self.analyst, self.score, self.summary,
                self.document_key)  # fmt: skip


RULE_CLOCKS: dict[str, RuleClock] = {
    "call_analyses": RuleClock("call_analyses", lambda a: a.created_at),
    "contracting_recordings": RuleClock(
        "call_recordings", lambda r: r.started_at if r.reason == "contracting" else None
    ),
    "quality_and_claims_recordings": RuleClock(
        "call_recordings", lambda r: r.started_at if r.reason in ("quality", "claims") else None
    ),
}


def call(
    gen: Builder, customer: Customer, reason: str, started_at: dt.datetime, *, analysed: bool | None = None
) -> CallRecording:
    call_id = gen.take_id(CallRecording)
    recording = CallRecording(
        id=call_id,
        customer=customer,
        phone_number=customer.phone,
        reason=reason,
        started_at=started_at,
        duration_s=gen.integer(45, 1800),
        agent_name=gen.pick(gen.pools.agents),
        audio_key=f"calls/{call_id}.mp3" if gen.rng.random() < 0.98 else None,
    )
    gen.add(recording)
    touch(customer, min(started_at, gen.snapshot))
    if analysed is None:
        analysed = gen.rng.random() < ANALYSED_CALL_SHARE
    created_at = started_at + gen.days(1, 14)
    if analysed and created_at < gen.snapshot:
        call_analysis(gen, recording, created_at)
    return recording


def call_analysis(gen: Builder, recording: CallRecording, created_at: dt.datetime) -> CallAnalysis:
    analysis_id = gen.take_id(CallAnalysis)
    analysis = CallAnalysis(
        id=analysis_id,
        call_recording=recording,
        created_at=created_at,
        analyst=gen.pick(gen.pools.agents),
        score=gen.integer(1, 11),
        summary=gen.pick(ANALYSIS_SUMMARIES),
        document_key=f"call-analyses/{analysis_id}.pdf",
    )
    gen.add(analysis)
    return analysis


def support_calls(gen: Builder, customer: Customer) -> None:
    # Calls old enough for both the recording and its analysis to be gone are not made up.
    since = max(customer.created_at, gen.retention.kept_since("call_analyses") - dt.timedelta(days=14))
    if since >= gen.snapshot:
        return
    years = (gen.snapshot - since).days / 365
    for _ in range(gen.poisson(SUPPORT_CALLS_PER_CUSTOMER_YEAR * years)):
        reason = "claims" if gen.rng.random() < 0.6 else "quality"
        call(gen, customer, reason, gen.between(since, gen.snapshot))
