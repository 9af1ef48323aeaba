"""What the project is called in Airflow: its DAG ids, owner and start date, the pool of the
archive units, and the archive Assets the runs emit. Shared by the DAG factory, the tasks, the
watch and the Retention page (each imports these names, never the factory).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from airflow.sdk import Asset, AssetAlias

from retention.policy import Policy

OWNER = "data-protection"
# Caps the archive units writing to the source database at once, over every purpose (created by
# tools/devstack.py and docker-compose.yaml's airflow-init; docs/architecture.md, "Scaling out").
SOURCE_WRITERS_POOL = "retention_source_writers"
# Early enough that a backfill can replay any date of the 10 years of data (catchup is off).
START_DATE = dt.datetime(2016, 1, 1, tzinfo=ZoneInfo("Europe/Paris"))


def dag_id_for(purpose: str) -> str:
    return f"retention_{purpose}"


def archive_asset(policy: Policy, purpose_name: str, tier: str) -> Asset:
    """Where one tier of the purpose's archives goes, as an Asset (a prefix, never personal data)."""
    storage = policy.storage_settings()
    return Asset(
        uri=f"s3://{storage.archive_bucket}/{storage.tiers[tier].prefix}/{purpose_name}/", group="retention-archive"
    )


def archive_assets(policy: Policy, purpose_name: str) -> list[Asset]:
    """Where the purpose's archives go, one Asset per archive tier of its rules."""
    tiers = sorted({r.tier for r in policy.purpose(purpose_name).rules if r.archived})
    return [archive_asset(policy, purpose_name, t) for t in tiers]


def archive_alias(purpose_name: str) -> AssetAlias:
    """The archive task's outlet. Through an alias, an Asset event is emitted only for the tiers a
    run actually wrote objects to (retention.tasks.emit_archive_events): a run that archived
    nothing, a dry run or a preview run emits none (a plain Asset outlet emits one on every
    success)."""
    return AssetAlias(name=f"retention_{purpose_name}_archive", group="retention-archive")


SUBJECT_REQUESTS_DAG_ID = "retention_subject_requests"
