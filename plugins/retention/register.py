"""The retention part of the record of processing activities (RGPD Art. 30(1)(f)), made from the
policy and the audit: what a data-protection officer hands to the authority as it is.

Two parts. The schedule, from the policy file alone: per purpose and rule, the purpose and its
legal basis in the policy's words, the categories of data, the records, the clock, the live
period, the archive tier and period, when nothing is left, what a legal hold on which records
keeps, and what makes a record wait for another. What was done, from ``retention.audit_log``
(include/sql/register/activity_by_month.sql): per purpose and month of the period asked, the
records archived and deleted, deleted, erased on request, purged from the archive, held and
waiting. Counts only: no id, key or value of a record reaches it.

    python -m retention.register --dsn URL [--from YYYY-MM-DD] [--to YYYY-MM-DD] --format csv|html --out FILE

The Retention page serves the same (retention_ui.app: /retention/register, /retention/api/register.csv).
docs/register.md says how the DPO produces it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import hashlib
import io
import sys
from html import escape
from pathlib import Path
from zoneinfo import ZoneInfo

from retention.paths import REPO_ROOT, SQL_DIR
from retention.policy import Policy, Rule, default_policy, policy_path
from retention.policy.coverage import ancestors_first

ACTIVITY_SQL = SQL_DIR / "register" / "activity_by_month.sql"
# Without --from: the twelve months up to --to (the current one included).
DEFAULT_MONTHS = 12
# A register of ten years at most in one go (a row per purpose and month): ask for the rest in parts.
MAX_MONTHS = 120
TITLE = "Record of processing activities: retention (RGPD Art. 30(1)(f))"


class RegisterError(ValueError):
    """A period the register cannot be made for; the message says why, in the asker's terms."""


@dataclasses.dataclass(frozen=True)
class ScheduleRow:
    """One rule of one purpose, as the policy says."""

    purpose: str
    title: str
    purpose_fr: str
    legal_basis: str
    legal_basis_fr: str
    data_categories_fr: str
    retention_fr: str
    mode: str
    rule: str
    records: str
    table: str
    clock: str
    live: str
    archive_tier: str
    archive: str
    gone_after: str
    held_by: str
    waits_for: str


@dataclasses.dataclass(frozen=True)
class ActivityRow:
    """What was done for one purpose in one month (activity_by_month.sql says what each counts)."""

    purpose: str
    month: str
    runs: int = 0
    archived_and_deleted: int = 0
    deleted_without_archive: int = 0
    erased_on_request: int = 0
    purged_from_archive: int = 0
    held: int = 0
    archive_held: int = 0
    waiting: int = 0


COUNTS = tuple(f.name for f in dataclasses.fields(ActivityRow))[2:]


@dataclasses.dataclass(frozen=True)
class Register:
    generated_at: dt.datetime
    policy_file: str
    policy_sha256: str
    timezone: str
    period_from: dt.date
    period_to: dt.date
    schedule: tuple[ScheduleRow, ...]
    activity: tuple[ActivityRow, ...]


def parse_period(period_from: str | None, period_to: str | None, today: dt.date) -> tuple[dt.date, dt.date]:
    """The period asked, both days included; ``to`` defaults to today, ``from`` to the first day
    of the month DEFAULT_MONTHS - 1 months before ``to``. Refused (RegisterError): a text that is
    not a date, ``from`` after ``to``, more than MAX_MONTHS months."""

    def day(name: str, text: str | None) -> dt.date | None:
        if text is None or not text.strip():
            return None
        try:
            return dt.date.fromisoformat(text.strip())
        except ValueError:
            raise RegisterError(f"{name}: {text.strip()[:40]!r} is not a date (expected YYYY-MM-DD)") from None

    end = day("to", period_to) or today
    start = day("from", period_from) or _month_start(end, -(DEFAULT_MONTHS - 1))
    if start > end:
        raise RegisterError(f"from {start.isoformat()} is after to {end.isoformat()}: the period is empty")
    months = len(_months(start, end))
    if months > MAX_MONTHS:
        raise RegisterError(f"the period covers {months} months, at most {MAX_MONTHS}: ask for it in parts")
    return start, end


def _month_start(day: dt.date, shift: int) -> dt.date:
    year, month = divmod(day.year * 12 + day.month - 1 + shift, 12)
    return dt.date(year, month + 1, 1)


def _months(start: dt.date, end: dt.date) -> list[str]:
    count = (end.year - start.year) * 12 + end.month - start.month + 1
    return [_month_start(start, i).strftime("%Y-%m") for i in range(count)]


def schedule_rows(policy: Policy) -> tuple[ScheduleRow, ...]:
    """Every rule of every purpose, in the policy's order (rules generated from `dependents` too)."""
    rows = []
    for name, purpose in policy.purposes.items():
        for rule in purpose.rules:
            rows.append(
                ScheduleRow(
                    purpose=name,
                    title=purpose.title,
                    purpose_fr=purpose.purpose_fr,
                    legal_basis=rule.legal_basis or purpose.legal_basis,
                    legal_basis_fr=purpose.legal_basis_fr,
                    data_categories_fr="; ".join(purpose.data_categories_fr),
                    retention_fr=purpose.retention_fr,
                    mode=purpose.mode,
                    rule=rule.name,
                    records=rule.description,
                    table=rule.table,
                    clock=rule.clock,
                    live=str(rule.live),
                    archive_tier=rule.tier,
                    archive=str(rule.archive) if rule.archive else "",
                    gone_after=str(rule.gone_after),
                    held_by=_held_by(policy, rule),
                    waits_for=_waits_for(policy, rule),
                )
            )
    return tuple(rows)


def _held_by(policy: Policy, rule: Rule) -> str:
    """Whose legal hold keeps the rule's rows (and their archived copies): retention.policy.coverage."""
    owners = [t for t in ancestors_first(policy, [rule.table]) if t != rule.table]
    return f"a hold on the {rule.table} row" + (f" or on its {', '.join(owners)}" if owners else "")


def _waits_for(policy: Policy, rule: Rule) -> str:
    """The rows of other tables that keep one of the rule's rows while they exist (`dependents`;
    the `go_with_parent` ones go with it instead: the generated rules)."""
    links = policy.dependents.get(rule.table, {})
    waits = [
        f"{child}{' (alarmed)' if decision == 'keep_parent_and_alert' else ''}"
        for child, decision in links.items()
        if decision != "go_with_parent"
    ]
    return ", ".join(waits) if waits else "-"


def activity_rows(conn, policy: Policy, start: dt.date, end: dt.date) -> tuple[ActivityRow, ...]:
    """Per purpose of the policy (and any other the audit names) and per month of the period,
    zeros included: counts over the audit rows written from ``start`` to ``end`` (local days)."""
    tz = ZoneInfo(policy.timezone)
    params = {
        "timezone": policy.timezone,
        "start": dt.datetime.combine(start, dt.time(0), tzinfo=tz),
        "end": dt.datetime.combine(end + dt.timedelta(days=1), dt.time(0), tzinfo=tz),
    }
    found = {}
    with conn.cursor() as cur:
        cur.execute(ACTIVITY_SQL.read_text(encoding="utf-8"), params)
        for purpose, month, *counts in cur.fetchall():
            found[(purpose, month)] = ActivityRow(purpose, month, *(int(c) for c in counts))
    purposes = [*policy.purposes, *sorted({p for p, _ in found} - set(policy.purposes))]
    months = _months(start, end)
    return tuple(found.get((p, m), ActivityRow(p, m)) for p in purposes for m in months)


def build_register(conn, policy: Policy, start: dt.date, end: dt.date, *, path: Path | None = None) -> Register:
    """The register for the period (both days included), read through ``conn`` (read only)."""
    path = path or policy_path()
    try:
        shown = path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        shown = path.name
    return Register(
        generated_at=dt.datetime.now(ZoneInfo(policy.timezone)).replace(microsecond=0),
        policy_file=shown,
        policy_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        timezone=policy.timezone,
        period_from=start,
        period_to=end,
        schedule=schedule_rows(policy),
        activity=activity_rows(conn, policy, start, end),
    )


def to_csv(register: Register) -> str:
    """One file, two sections (``section,schedule`` and ``section,activity``), each with its header."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["register", TITLE])
    writer.writerow(["generated_at", register.generated_at.isoformat()])
    writer.writerow(["policy", register.policy_file, f"sha256:{register.policy_sha256}"])
    writer.writerow(["period", register.period_from.isoformat(), register.period_to.isoformat(), register.timezone])
    for section, rows, cls in (
        ("schedule", register.schedule, ScheduleRow),
        ("activity", register.activity, ActivityRow),
    ):
        writer.writerow([])
        writer.writerow(["section", section])
        writer.writerow([f.name for f in dataclasses.fields(cls)])
        writer.writerows(dataclasses.astuple(r) for r in rows)
    return out.getvalue()


_CSS = """
body { font: 12px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a202c; margin: 16px 24px; }
h1 { font-size: 19px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 22px 0 6px; } h3 { font-size: 13px; margin: 14px 0 4px; }
.muted { color: #5a6577; } dl { display: grid; grid-template-columns: 12em 1fr; gap: 2px 12px; margin: 4px 0 8px; }
dt { font-weight: 600; } dd { margin: 0; }
table { border-collapse: collapse; width: 100%; margin-bottom: 8px; }
th, td { border: 1px solid #cbd5e0; padding: 3px 6px; text-align: left; vertical-align: top; overflow-wrap: break-word; }
th { background: #f7fafc; font-weight: 600; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 600; background: #f7fafc; } td.month { white-space: nowrap; }
@page { size: A4 landscape; margin: 12mm; }
@media print {
  body { margin: 0; font-size: 10px; }
  thead { display: table-header-group; } tr, dl { break-inside: avoid; }
  section.purpose { break-inside: avoid-page; } h2 { break-after: avoid; }
}
"""
_RULE_COLUMNS = (
    ("rule", "rule"),
    ("records", "records"),
    ("table", "table"),
    ("clock", "clock"),
    ("live", "live in the database"),
    ("archive_tier", "archive tier"),
    ("archive", "archive period"),
    ("gone_after", "nothing left after"),
    ("held_by", "kept by a legal hold"),
    ("waits_for", "waits while referenced by"),
)
_COUNT_LABELS = {
    "runs": "runs",
    "archived_and_deleted": "archived and deleted",
    "deleted_without_archive": "deleted (no archive)",
    "erased_on_request": "erased on request",
    "purged_from_archive": "purged from archive",
    "held": "held (most in a run)",
    "archive_held": "archived, held (most in a run)",
    "waiting": "waiting (most in a run)",
}


def to_html(register: Register) -> str:
    """A printable page, self-contained: its CSS inline, no script, image or link to load."""
    e = escape
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(TITLE)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(TITLE)}</h1>",
        f'<p class="muted">Generated {e(register.generated_at.isoformat())} from {e(register.policy_file)} '
        f"(sha256 {e(register.policy_sha256)}) and the audit log; activity from "
        f"<strong>{register.period_from.isoformat()}</strong> to <strong>{register.period_to.isoformat()}</strong> "
        f"({e(register.timezone)}). Counts only: no personal data. A legal hold (litigation, an open fraud case, "
        "a regulator's request) keeps the record and what belongs to it, live and archived, until it is released.</p>",
        "<h2>The schedule</h2>",
    ]
    by_purpose: dict[str, list[ScheduleRow]] = {}
    for row in register.schedule:
        by_purpose.setdefault(row.purpose, []).append(row)
    for purpose, rows in by_purpose.items():
        first = rows[0]
        parts += [
            f'<section class="purpose" id="purpose-{e(purpose)}"><h3>{e(first.title)} <span class="muted">({e(purpose)}, '
            f"{e(first.mode)})</span></h3><dl>",
            f"<dt>Finalité</dt><dd>{e(first.purpose_fr)}</dd>",
            f"<dt>Base légale</dt><dd>{e(first.legal_basis_fr)} ({e(first.legal_basis)})</dd>",
            f"<dt>Catégories de données</dt><dd>{e(first.data_categories_fr)}</dd>",
            f"<dt>Durée de conservation</dt><dd>{e(first.retention_fr)}</dd></dl>",
            "<table><thead><tr>"
            + "".join(f"<th>{e(label)}</th>" for _, label in _RULE_COLUMNS)
            + "</tr></thead><tbody>",
        ]
        parts += [
            "<tr>" + "".join(f"<td>{_breakable(getattr(r, field) or '-')}</td>" for field, _ in _RULE_COLUMNS) + "</tr>"
            for r in rows
        ]
        parts.append("</tbody></table></section>")
    parts += [
        "<h2>What was done</h2>",
        '<p class="muted">Records per purpose and month (the first and last months from and to the dates '
        "above), from the audit log. Held and waiting: records kept by the runs of the month, the most in one run.</p>",
        '<table id="activity"><thead><tr><th>purpose</th><th>month</th>'
        + "".join(f'<th class="num">{e(_COUNT_LABELS[c])}</th>' for c in COUNTS)
        + "</tr></thead><tbody>",
    ]
    purposes = list(dict.fromkeys(r.purpose for r in register.activity))
    for purpose in purposes:
        rows = [r for r in register.activity if r.purpose == purpose]
        for r in rows:
            parts.append(
                f'<tr><td>{e(r.purpose)}</td><td class="month">{e(r.month)}</td>'
                + "".join(f'<td class="num">{getattr(r, c)}</td>' for c in COUNTS)
                + "</tr>"
            )
        totals = [
            sum(getattr(r, c) for r in rows) if not _most(c) else max(getattr(r, c) for r in rows) for c in COUNTS
        ]
        parts.append(
            f'<tr class="total"><td>{e(purpose)}</td><td class="month">whole period</td>'
            + "".join(f'<td class="num">{t}</td>' for t in totals)
            + "</tr>"
        )
    parts.append("</tbody></table></body></html>")
    return "\n".join(parts)


def _breakable(text: str) -> str:
    """Escaped, with a line break allowed after each '_' and '.' of an identifier (a narrow column
    on paper wraps `former_customer_prospects__information_requests` instead of overflowing)."""
    return escape(text).replace("_", "_<wbr>").replace(".", ".<wbr>")


def _most(count: str) -> bool:
    """Counts of records kept again by every run: a period shows the most, not a sum."""
    return count in ("held", "archive_held", "waiting")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retention.register", description=TITLE)
    parser.add_argument("--dsn", required=True, help="the source database (libpq URL or key=value string)")
    parser.add_argument(
        "--from", dest="period_from", metavar="YYYY-MM-DD", help="first day (default: 11 months before --to, 1st)"
    )
    parser.add_argument("--to", dest="period_to", metavar="YYYY-MM-DD", help="last day, included (default: today)")
    parser.add_argument("--format", choices=("csv", "html"), required=True)
    parser.add_argument("--out", required=True, help="the file to write ('-': standard output)")
    args = parser.parse_args(argv)
    policy = default_policy()
    try:
        start, end = parse_period(args.period_from, args.period_to, dt.datetime.now(ZoneInfo(policy.timezone)).date())
    except RegisterError as exc:
        parser.error(str(exc))
    import psycopg

    try:
        with psycopg.connect(args.dsn, autocommit=True, application_name="retention:register") as conn:
            conn.execute("SET default_transaction_read_only = on")
            register = build_register(conn, policy, start, end)
    except psycopg.OperationalError as exc:
        print(f"register: cannot read the database: {str(exc).strip()}", file=sys.stderr)
        return 1
    text = to_csv(register) if args.format == "csv" else to_html(register)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text, encoding="utf-8")
        print(
            f"register: {len(register.schedule)} rules of {len({r.purpose for r in register.schedule})} purposes, "
            f"activity {start.isoformat()} to {end.isoformat()} ({len(register.activity)} purpose-months) -> {args.out}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
