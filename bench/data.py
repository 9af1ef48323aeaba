"""The bench dataset: N expired quotes, shaped like app.quotes, built once into a template table.

Rows are made here rather than by the synthetic generator so that N is exact and the proportions
do not depend on it: French personal values from Faker (fr_FR) pools, sampled with a seeded
Random, loaded by COPY. As in production, ids grow with ``issued_at`` (identity ids are given
at insert time), so a batch of consecutive ids spans a month or two of quotes.

The N due quotes were issued during the year before the cutoff (live period over, archive period
still running at the logical date), so every contestant must archive all of them. Besides the
N due rows the table holds rows every contestant must leave alone: recent quotes
(not due yet) and due-aged quotes under an active legal hold. ``bench.expected_due`` lists the
N ids that must be archived and deleted.

Each contestant gets an identical fresh copy (`restore`): TRUNCATE, INSERT ... SELECT from the
template, VACUUM ANALYZE, CHECKPOINT; the bookkeeping tables are emptied, legal holds kept.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import unicodedata
from dataclasses import dataclass

import psycopg

QUOTE_COLUMNS = (
    "id",
    "customer_id",
    "prospect_id",
    "email",
    "pet_name",
    "species",
    "breed",
    "pet_birth_date",
    "postal_code",
    "formula",
    "monthly_premium",
    "issued_at",
    "contract_id",
)
DOG_BREEDS = (
    "Berger Australien",
    "Labrador Retriever",
    "Golden Retriever",
    "Berger Allemand",
    "Staffordshire Bull Terrier",
    "Bouledogue Français",
    "Cavalier King Charles",
    "Jack Russell Terrier",
    "Border Collie",
    "Chihuahua",
    "Beagle",
    "Malinois",
    "Cocker Spaniel Anglais",
    "Setter Anglais",
    "Épagneul Breton",
    "Shih Tzu",
    "Yorkshire Terrier",
    "Teckel",
    "Bichon Frisé",
    "Croisé",
)
CAT_BREEDS = (
    "Européen",
    "Maine Coon",
    "Sacré de Birmanie",
    "Persan",
    "British Shorthair",
    "Chartreux",
    "Bengal",
    "Ragdoll",
    "Siamois",
    "Norvégien",
    "Sphynx",
    "Abyssin",
    "Croisé",
)
PET_NAMES = (
    "Rex",
    "Max",
    "Filou",
    "Oscar",
    "Milo",
    "Simba",
    "Nala",
    "Luna",
    "Caramel",
    "Pepsi",
    "Tigrou",
    "Minou",
    "Gribouille",
    "Plume",
    "Noisette",
    "Moka",
    "Pistache",
    "Ulysse",
    "Vanille",
    "Biscotte",
    "Loustic",
    "Pompon",
    "Réglisse",
    "Sushi",
    "Tofu",
    "Iris",
    "Jazz",
    "Kiwi",
    "Lasco",
    "Nouky",
    "Orphée",
    "Praline",
)
# formula -> (dog range, cat range) of the monthly premium in euros
FORMULAS = {
    "essentielle": ((9.9, 19.9), (6.9, 14.9)),
    "confort": ((19.9, 39.9), (14.9, 29.9)),
    "premium": ((39.9, 79.9), (29.9, 59.9)),
}


@dataclass(frozen=True)
class Dataset:
    due: int
    held: int
    recent: int
    prospects: int
    build_s: float

    @property
    def total(self) -> int:
        return self.due + self.held + self.recent


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower().replace(" ", "-")


def _pools(seed: int) -> dict:
    from faker import Faker

    fake = Faker("fr_FR")
    fake.seed_instance(seed)
    return {
        "first": [_ascii(fake.first_name()) for _ in range(2000)],
        "last": [_ascii(fake.last_name()) for _ in range(2000)],
        "domain": [fake.free_email_domain() for _ in range(200)],
        "postcode": [fake.postcode() for _ in range(5000)],
        "pet": PET_NAMES + tuple(fake.first_name() for _ in range(200)),
    }


def _lines(rng: random.Random, pools: dict, first_id: int, stamps: list[int], prospects: int):
    """One COPY text line per quote; `stamps` are the sorted issue instants (epoch seconds)."""
    first, last, domain, postcode, pet = (pools[k] for k in ("first", "last", "domain", "postcode", "pet"))
    rnd, choice, randrange = rng.random, rng.choice, rng.randrange
    formulas = list(FORMULAS.items())
    utc = dt.UTC
    for offset, stamp in enumerate(stamps):
        issued = dt.datetime.fromtimestamp(stamp, utc)
        dog = rnd() < 0.6
        formula, ranges = choice(formulas)
        low, high = ranges[0] if dog else ranges[1]
        premium = low + (high - low) * rnd()
        birth = issued.date() - dt.timedelta(days=randrange(60, 15 * 365))
        prospect = str(randrange(1, prospects + 1)) if prospects and rnd() < 0.7 else "\\N"
        yield (
            f"{first_id + offset}\t\\N\t{prospect}\t{choice(first)}.{choice(last)}{randrange(100)}@{choice(domain)}\t"
            f"{choice(pet)}\t{'dog' if dog else 'cat'}\t{choice(DOG_BREEDS if dog else CAT_BREEDS)}\t{birth.isoformat()}\t"
            f"{choice(postcode)}\t{formula}\t{premium:.2f}\t{issued.isoformat(' ')}\t\\N\n"
        )


def build_template(
    dsn: str, rows: int, cutoff: dt.datetime, logical_date: dt.datetime, seed: int = 42, due_days: int = 364
) -> Dataset:
    """(Re)create bench.quotes_template with `rows` due quotes plus held and recent ones; the due
    ones issued over the `due_days` days before the cutoff (364: a backlog, whose archive periods
    end on 364 days; 1: what a daily run finds, all ending on one day)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    pools = _pools(seed)
    held = max(3, rows // 10_000)
    recent = max(10, rows // 20)
    prospects = max(1, rows // 2)
    # Due quotes were issued over the days before the cutoff: all of them are still inside their
    # archive period at the logical date (the engine deletes without archiving a backlog row whose
    # archive period is already over, and the three contestants must do the same job).
    span = due_days * 86400
    end = int(cutoff.timestamp())
    due_aged = sorted(rng.randrange(end - span, end) for _ in range(rows + held))
    recent_stamps = sorted(rng.randrange(end + 86400, int(logical_date.timestamp())) for _ in range(recent))
    held_positions = set(rng.sample(range(rows + held), held))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        conn.execute("DROP TABLE IF EXISTS bench.quotes_template, bench.expected_due")
        conn.execute("CREATE TABLE bench.quotes_template (LIKE app.quotes)")
        conn.execute("CREATE TABLE bench.expected_due (id bigint PRIMARY KEY)")
        conn.execute(
            "TRUNCATE app.quotes, retention.legal_holds, retention.purge_intents, retention.object_rewrites, retention.archive_manifest,"
            " retention.audit_log, retention.document_disposals"
        )
        conn.execute("TRUNCATE app.prospects RESTART IDENTITY CASCADE")
        # Prospects only exist for the quotes' foreign key; they are not part of the measure.
        conn.execute(
            "INSERT INTO app.prospects (id, email, created_at, last_contact_at)"
            " SELECT g, 'prospect' || g || '@example.fr', %(t)s, %(t)s FROM generate_series(1, %(n)s) AS g",
            {"t": cutoff - dt.timedelta(days=800), "n": prospects},
        )
        with (
            conn.transaction(),
            conn.cursor().copy(f"COPY bench.quotes_template ({', '.join(QUOTE_COLUMNS)}) FROM STDIN") as copy,
        ):
            buffer: list[str] = []
            for line in _lines(rng, pools, 1, due_aged + recent_stamps, prospects):
                buffer.append(line)
                if len(buffer) >= 20_000:
                    copy.write("".join(buffer))
                    buffer.clear()
            if buffer:
                copy.write("".join(buffer))
        held_ids = sorted(pos + 1 for pos in held_positions)
        with conn.transaction():
            conn.execute(
                "INSERT INTO bench.expected_due SELECT g FROM generate_series(1, %s) AS g WHERE g <> ALL(%s)",
                (rows + held, held_ids),
            )
            conn.cursor().executemany(
                "INSERT INTO retention.legal_holds (table_name, record_id, reason) VALUES ('quotes', %s, 'bench: litigation')",
                [(i,) for i in held_ids],
            )
        conn.execute("SELECT setval(pg_get_serial_sequence('app.quotes', 'id'), %s)", (rows + held + recent,))
        conn.execute("VACUUM ANALYZE bench.quotes_template, bench.expected_due, app.prospects, retention.legal_holds")
    return Dataset(rows, held, recent, prospects, time.perf_counter() - started)


def restore(dsn: str) -> float:
    """An identical fresh copy of the quotes table; empty bookkeeping (legal holds kept)."""
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE app.quotes, retention.purge_intents, retention.object_rewrites, retention.archive_manifest, retention.audit_log,"
            " retention.document_disposals"
        )
        with conn.transaction():
            # The prospects exist; skip re-checking the foreign key of every copied row.
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(
                f"INSERT INTO app.quotes ({', '.join(QUOTE_COLUMNS)}) "
                f"SELECT {', '.join(QUOTE_COLUMNS)} FROM bench.quotes_template"
            )
        conn.execute("VACUUM ANALYZE app.quotes")
        conn.execute("VACUUM ANALYZE retention.archive_manifest, retention.audit_log, retention.document_disposals")
        conn.execute("CHECKPOINT")
    return time.perf_counter() - started


def expected_ids_digest(dsn: str) -> tuple[int, str]:
    with psycopg.connect(dsn) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM bench.expected_due ORDER BY id")]
    return len(ids), ids_digest(ids)


def deleted_ids(dsn: str) -> tuple[list[int], int]:
    """Ids of the template missing from app.quotes, and the count of rows left."""
    with psycopg.connect(dsn) as conn:
        gone = [
            r[0]
            for r in conn.execute(
                "SELECT t.id FROM bench.quotes_template AS t WHERE NOT EXISTS"
                " (SELECT 1 FROM app.quotes AS q WHERE q.id = t.id) ORDER BY t.id"
            )
        ]
        left = conn.execute("SELECT count(*) FROM app.quotes").fetchone()[0]
    return gone, left


def ids_digest(ids) -> str:
    import hashlib

    digest = hashlib.sha256()
    for start in range(0, len(ids), 100_000):
        digest.update(",".join(map(str, ids[start : start + 100_000])).encode() + b",")
    return digest.hexdigest()
