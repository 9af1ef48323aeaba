"""The Retention page's HTML: its Jinja templates (templates/) and the filters they use (Paris
times, byte sizes, counts being recounted), the page and a run's evidence page.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from pathlib import Path
from zoneinfo import ZoneInfo

TEMPLATES = Path(__file__).resolve().parent / "templates"
PARIS = ZoneInfo("Europe/Paris")


def paris(value: str | None, with_time: bool = True) -> str:
    if not value:
        return "—"
    instant = dt.datetime.fromisoformat(value).astimezone(PARIS)
    return instant.strftime("%Y-%m-%d %H:%M") if with_time else instant.strftime("%Y-%m-%d")


def human_bytes(n: int | None) -> str:
    if not n:
        return "0 B"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"


BYTE_UNITS = (("B", 1), ("KiB", 1024), ("MiB", 1024**2), ("GiB", 1024**3), ("TiB", 1024**4))


def bytes_unit(peak: int) -> dict:
    """The unit of a bytes axis whose highest bar is ``peak`` bytes: the largest in which it is
    at least 1 (14 KiB on a KiB axis, not 0.014 MiB)."""
    name, size = next(((n, s) for n, s in reversed(BYTE_UNITS) if peak >= s), BYTE_UNITS[0])
    return {"name": name, "size": size}


def counted(value: int | None) -> str:
    """A count, or an ellipsis while it is withheld (being counted again)."""
    return "…" if value is None else str(value)


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(seconds, 0)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _environment(undefined: str, **filters):
    """A Jinja environment on templates/, with the filters every page uses and ``filters``."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=getattr(jinja2, undefined)
    )
    env.filters.update(paris=paris, bytes=human_bytes, **filters)
    return env


@functools.cache
def _templates():
    """The page's environment, built once (it compiles the template once, and again if the file changes)."""
    return _environment("StrictUndefined", counted=counted, age=age)


def render_page(data: dict, csrf: str = "") -> str:
    env = _templates()
    per_month: dict[str, int] = {}
    for r in data["archive_by_purge_month"]:
        per_month[r["purge_month"]] = per_month.get(r["purge_month"], 0) + r["bytes"]
    charts = {
        "per_day": data["deleted_per_day"],
        "by_month": data["archive_by_purge_month"],
        "bytes_unit": bytes_unit(max(per_month.values(), default=0)),
        "purposes": [p["purpose"] for p in data["purposes"]],
    }
    from retention.rights.requests import REQUEST_ID_PATTERN

    return env.get_template("retention.html").render(
        data=data,
        charts_json=json.dumps(charts).replace("<", "\\u003c"),
        any_overdue=any(p["overdue"] or p["counts"]["last_overdue"] for p in data["purposes"]),
        withheld=[p["purpose"] for p in data["purposes"] if p["counts"]["state"] == "outdated"],
        csrf_token=csrf,
        request_id_pattern=REQUEST_ID_PATTERN.strip("^$"),
        waiting=[w | {"purpose": p["purpose"]} for p in data["purposes"] for w in p["waiting_past_end"]],
    )


def count_of(value) -> int:
    """A rule's waiting count: per blocking table in a run's outcome, one number in the audit's."""
    if isinstance(value, dict):
        return sum(value.values())
    return int(value) if isinstance(value, int) else 0


def end_days(days) -> str:
    """When a run's archived rows go (each on its own end day): one date, or the first and last."""
    if not isinstance(days, dict) or not days:
        return "-"
    first, last = min(days), max(days)
    return first if first == last else f"{first} .. {last} ({len(days)} days)"


def render_evidence(ev: dict) -> str:
    """A run's evidence as a page: its report as a table, then what it committed, its archive
    objects and its gates. Tolerant of summaries written by older versions of the report."""
    env = _environment("ChainableUndefined", count_of=count_of, days=end_days)
    report = ev.get("report")
    would = bool(report) and bool(report.get("previewed", report.get("mode") == "preview" or report.get("dry_run")))
    return env.get_template("evidence.html").render(ev=ev, report=report, would=would)
