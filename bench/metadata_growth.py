"""The size of Airflow's metadata database after N simulated days of daily runs, with and without
the housekeeping (issue 23 §1, docs/housekeeping.md).

    .venv/bin/python -m bench.metadata_growth [--days 30 --days 365] [--dags 14] [--tasks 9]

A throwaway PostgreSQL cluster, Airflow's schema migrated by `airflow db migrate`, then for each
day and each DAG one scheduled run with its task instances, one XCom per task (the run reports:
``--xcom-bytes`` of JSON each) and a few rows of the log table, written by SQL (the volume of a
real stack's day, without running it). The same database is copied; on the copy, the housekeeping's
own code (retention.housekeeping.clean_airflow_metadata: Airflow's run_cleanup, skip_archive) runs
as on the last simulated day, with the shipped policy's periods. Reported per case: the rows and
the tables' size after VACUUM FULL (the data kept), and the database's size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TABLES = ("dag_run", "task_instance", "xcom", "log")

SIMULATE = """
INSERT INTO dag_run (dag_id, queued_at, logical_date, start_date, end_date, state, run_id, run_type,
                     data_interval_start, data_interval_end, run_after, clear_number, span_status, conf)
SELECT d.dag_id, t, t, t, t + interval '3 minutes', 'success', 'scheduled__' || to_char(t, 'YYYY-MM-DD"T"HH24:MI:SS'),
       'scheduled', t - interval '1 day', t, t, 0, 'ended', '{}'::jsonb
  FROM generate_series(%(first)s::timestamptz, %(last)s::timestamptz, interval '1 day') AS t,
       (SELECT 'retention_dag_' || n AS dag_id FROM generate_series(1, %(dags)s) AS n) AS d;

INSERT INTO task_instance (id, task_id, dag_id, run_id, map_index, start_date, end_date, duration, state,
                           try_number, max_tries, hostname, unixname, pool, pool_slots, queue,
                           priority_weight, operator, executor_config, span_status)
SELECT gen_random_uuid(), 'task_' || n, r.dag_id, r.run_id, -1, r.start_date, r.end_date, 12.5, 'success',
       1, 0, 'worker-1', 'airflow', 'default_pool', 1, 'default', 1, '_PythonDecoratedOperator',
       '\\x80057d942e'::bytea, 'ended'
  FROM dag_run AS r, generate_series(1, %(tasks)s) AS n;

INSERT INTO xcom (dag_run_id, task_id, map_index, key, dag_id, run_id, value, timestamp)
SELECT r.id, ti.task_id, -1, 'return_value', ti.dag_id, ti.run_id,
       jsonb_build_object('purpose', ti.dag_id, 'counts', jsonb_build_object('due', 120, 'deleted', 118),
                          'detail', repeat('x', %(xcom_bytes)s)),
       ti.end_date
  FROM task_instance AS ti JOIN dag_run AS r USING (dag_id, run_id);

INSERT INTO log (dttm, dag_id, task_id, event, logical_date, run_id, owner, extra)
SELECT r.start_date + (n || ' seconds')::interval, r.dag_id, NULL, e, r.logical_date, r.run_id, 'airflow', NULL
  FROM dag_run AS r, generate_series(1, 2) AS n, unnest(ARRAY['running', 'success']) AS e;
"""


def _sizes(dsn: str) -> dict:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
        database = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        for t in TABLES:
            conn.execute(f"VACUUM FULL {t}")
        tables = sum(conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0] for t in TABLES)
        compacted = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {"rows": rows, "tables_bytes": tables, "database_bytes": database, "database_bytes_compacted": compacted}


def measure(days: int, dags: int, tasks: int, xcom_bytes: int, now: dt.datetime) -> dict:
    import psycopg

    from tools import devstack

    state = Path(tempfile.mkdtemp(prefix="metadata-growth-"))
    state.chmod(0o755)  # the cluster runs as the postgres user
    pg = devstack.Postgres(state / "pg", devstack.free_port(), secrets.token_urlsafe(12))
    pg.start()
    try:
        pg.ensure_database("airflow")
        url = pg.dsn("airflow").replace("postgresql://", "postgresql+psycopg://")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env |= {
            "AIRFLOW_HOME": str(state / "home"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": url,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        }
        airflow = Path(sys.executable).parent / "airflow"
        subprocess.run([str(airflow), "db", "migrate"], env=env, check=True, capture_output=True)
        first = now - dt.timedelta(days=days - 1)
        with psycopg.connect(pg.dsn("airflow"), autocommit=True) as conn:
            params = {"first": first, "last": now, "dags": dags, "tasks": tasks, "xcom_bytes": xcom_bytes}
            for statement in SIMULATE.split(";\n\n"):
                conn.execute(statement, {k: v for k, v in params.items() if f"%({k})s" in statement})
            conn.execute("CHECKPOINT")
            conn.execute("CREATE DATABASE airflow_housekept TEMPLATE airflow")
        without = _sizes(pg.dsn("airflow"))

        from retention import housekeeping
        from retention.policy import load_policy

        policy = load_policy(REPO_ROOT / "include" / "retention_policy.yaml")
        done = housekeeping.clean_airflow_metadata(
            pg.dsn("airflow_housekept").replace("postgresql://", "postgresql+psycopg://"),
            policy,
            now + dt.timedelta(hours=1),
            enforce=True,
        )
        with_housekeeping = _sizes(pg.dsn("airflow_housekept"))
        with psycopg.connect(pg.dsn("airflow_housekept"), autocommit=True) as conn:
            left = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE '\\_airflow\\_deleted\\_\\_%'")
            archive_tables = left.fetchone()[0]
        return {
            "days": days,
            "dags": dags,
            "tasks_per_run": tasks,
            "xcom_bytes": xcom_bytes,
            "without_housekeeping": without,
            "with_housekeeping": with_housekeeping,
            "removed": {k: v["removed"] for k, v in done.items()},
            "archive_tables_left": archive_tables,
        }
    finally:
        pg.stop()
        subprocess.run(["rm", "-rf", str(state)], check=False)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, action="append", help="simulated days (repeatable; default 30 and 365)")
    parser.add_argument("--dags", type=int, default=14)
    parser.add_argument("--tasks", type=int, default=9, help="task instances (and XComs) per run")
    parser.add_argument("--xcom-bytes", type=int, default=1500)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    now = dt.datetime.now(dt.UTC).replace(hour=4, minute=0, second=0, microsecond=0)
    results = [measure(days, args.dags, args.tasks, args.xcom_bytes, now) for days in (args.days or [30, 365])]
    print("| days | | dag_run | task_instance | xcom | log | 4 tables (VACUUM FULL) | database | database compacted |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for case in ("without_housekeeping", "with_housekeeping"):
            s = r[case]
            print(
                f"| {r['days']} | {case.replace('_', ' ')} | "
                + " | ".join(f"{s['rows'][t]:,}" for t in TABLES)
                + f" | {_mib(s['tables_bytes'])} | {_mib(s['database_bytes'])} | {_mib(s['database_bytes_compacted'])} |"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
