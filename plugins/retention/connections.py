"""The source database's connection string, as the Postgres provider connects.

One place for it: the tasks, the watch, the report and the Retention page all connect through
`conninfo()`. The provider's PostgresHook opens the connection, so every extra it knows applies
(sslmode, sslrootcert, sslcert, options, keepalives, connect_timeout, an IAM token for RDS...);
the parameters libpq actually used are then read back from that connection and handed to
psycopg (the engine's transactions) and ADBC (its Arrow reads), which both take a libpq
connection string: one driver family, one set of settings.
"""

from __future__ import annotations

from contextlib import closing

# The source database, once per role (include/sql/schema/050_roles.sql, docs/audit.md "Roles"):
SOURCE_CONN_ID = "source_postgres"  # retention_engine: the purpose DAGs, the watch
RIGHTS_CONN_ID = "source_postgres_rights"  # retention_rights: the subject requests
READER_CONN_ID = "source_postgres_reader"  # retention_reader: the Retention page
COUNTER_CONN_ID = "source_postgres_counter"  # retention_counter: the page's stored counts
HOUSEKEEPING_CONN_ID = "source_postgres_housekeeping"  # retention_housekeeping: own records
# Airflow's own metadata database, for the housekeeping's db clean (retention.housekeeping).
AIRFLOW_DB_CONN_ID = "retention_airflow_db"


def conninfo(conn_id: str = SOURCE_CONN_ID, connection=None) -> str:
    """libpq ``key=value`` string of an Airflow Postgres connection (or of a Connection object
    the caller already read, e.g. the api-server's). An IAM token in it expires with the token."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(connection=connection) if connection is not None else PostgresHook(postgres_conn_id=conn_id)
    with closing(hook.get_conn()) as pg:
        return conninfo_of(pg)


def conninfo_of(pg) -> str:
    """The parameters a live psycopg connection was opened with, minus libpq's defaults (so that
    another libpq, ADBC's, is not handed keywords it may not know)."""
    from psycopg.conninfo import make_conninfo

    explicit = {}
    for option in pg.pgconn.info:
        if option.val is None or (option.compiled is not None and option.val == option.compiled):
            continue
        explicit[option.keyword.decode()] = option.val.decode()
    return make_conninfo(**explicit)


def sqlalchemy_url(conninfo_string: str) -> str:
    """The same parameters as a SQLAlchemy URL on psycopg 3 (Great Expectations' data source
    takes one): libpq keywords beyond user, password, host, port and dbname ride in the query."""
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import URL

    params = {k: str(v) for k, v in conninfo_to_dict(conninfo_string).items()}
    port = params.pop("port", None)
    return URL.create(
        "postgresql+psycopg",
        username=params.pop("user", None),
        password=params.pop("password", None),
        host=params.pop("host", None),
        port=int(port) if port else None,
        database=params.pop("dbname", None),
        query=params,
    ).render_as_string(hide_password=False)
