"""Document disposal (issue 11): files named by rows copied into the archive, then deleted.

    files of 20-200 KB in the documents bucket  ->  server-side copies in the archive bucket
                                                ->  the sources deleted

Contestants, each on fresh buckets (the S3 server emptied), the same files, order rotated per
repeat, median of the repeats:

- ``serial``: issue 11's description of the engine before it ("documents copied one at a time
  (head + copy + head)"), one file after another: HEAD the source, COPY it (SSE, storage class,
  SHA-256 checksum, as the store does), HEAD the copy and compare size and ETag, then one DELETE
  per file. The per-file requests are those of ``copy_documents`` before commit fec1c29
  (``git show fec1c29^:plugins/retention/archive_store.py``), run without its threads.
- ``store_fec1c29^``: that same code as it really was in the repository (8 threads, HEAD +
  COPY + HEAD, DeleteObjects 1,000 keys a call): git history shows the store never copied
  serially, so this is the "before" of the last change to the copy path.
- ``store``: today's path, ``ArchiveStore.copy_documents`` then ``delete_documents``.

Reported per contestant: files/s, client CPU (this process), and the S3 server's CPU (moto's
process, from /proc) over the same interval, which shows where the time goes on 2 cores.
Every run is checked: every archive copy present with its source's size, the documents bucket
empty. Runs in the bench's process (S3 calls only: no import weighs on the figures).
"""

from __future__ import annotations

import os
import random
import statistics
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

CONTESTANTS = ("serial", "store_fec1c29^", "store")
MIN_SIZE, MAX_SIZE = 20_000, 200_000
UPLOAD_THREADS = 16


class DocumentsBenchError(RuntimeError):
    pass


def keys_and_sizes(files: int, seed: int) -> list[tuple[str, int]]:
    """Keys shaped like the generator's (tools/seed: invoices, calls, AML documents)."""
    rng = random.Random(seed)
    kinds = (("invoices", "pdf"), ("calls", "mp3"), ("aml", "pdf"))
    return [
        (f"{kinds[i % 3][0]}/{100_000 + i}.{kinds[i % 3][1]}", rng.randint(MIN_SIZE, MAX_SIZE)) for i in range(files)
    ]


def _body(pool: bytes, key: str, size: int) -> bytes:
    """Distinct bytes per key (distinct ETags) without generating 1 GB of random data."""
    header = f"%synthetic bench document {key}\n".encode()
    offset = zlib.crc32(key.encode()) % (len(pool) - MAX_SIZE)
    return (header + pool[offset : offset + size])[:size]


def upload(client, bucket: str, files: list[tuple[str, int]], pool: bytes) -> float:
    started = time.perf_counter()

    def put(item: tuple[str, int]) -> None:
        key, size = item
        client.put_object(Bucket=bucket, Key=key, Body=_body(pool, key, size), ServerSideEncryption="AES256")

    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as threads:
        list(threads.map(put, files))
    return time.perf_counter() - started


# ---------------------------------------------------------------------------- contestants


def _copy_checked_by_head(client, store, pair: tuple[str, str], storage_class: str) -> None:
    """The copy as it was before issue 11: HEAD source, COPY, HEAD copy, compare."""
    source, target = pair
    head = client.head_object(Bucket=store.documents_bucket, Key=source)
    result = client.copy_object(
        Bucket=store.archive_bucket,
        Key=target,
        StorageClass=storage_class,
        ServerSideEncryption="AES256",
        CopySource={"Bucket": store.documents_bucket, "Key": source},
        ChecksumAlgorithm="SHA256",
    )
    version = result.get("VersionId")
    copied = client.head_object(Bucket=store.archive_bucket, Key=target, **({"VersionId": version} if version else {}))
    if copied["ContentLength"] != head["ContentLength"] or copied.get("ETag") != head.get("ETag"):
        raise DocumentsBenchError(f"archive copy of {source!r} does not match its source")


def dispose_serial(client, store, pairs: list[tuple[str, str]], storage_class: str) -> None:
    """One file after another: HEAD source, COPY, HEAD copy, compare; then one DELETE per file."""
    for pair in pairs:
        _copy_checked_by_head(client, store, pair, storage_class)
    for source, _ in pairs:
        client.delete_object(Bucket=store.documents_bucket, Key=source)


def dispose_fec1c29_parent(client, store, pairs: list[tuple[str, str]], storage_class: str) -> None:
    """The store's copy before commit fec1c29: HEAD + COPY + HEAD, 8 threads; DeleteObjects."""
    store._parallel(lambda pair: _copy_checked_by_head(client, store, pair, storage_class), pairs)
    store.delete_documents([source for source, _ in pairs])


def dispose_store(client, store, pairs: list[tuple[str, str]], storage_class: str) -> None:
    """Today's ArchiveStore path, as the engine calls it."""
    store.copy_documents(pairs, storage_class)
    store.delete_documents([source for source, _ in pairs])


DISPOSERS = {"serial": dispose_serial, "store_fec1c29^": dispose_fec1c29_parent, "store": dispose_store}


# ---------------------------------------------------------------------------- measure


def _cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process (its threads included), from /proc."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _verify(client, store, files: list[tuple[str, int]], pairs: list[tuple[str, str]]) -> dict:
    sizes = dict(files)
    archived = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=store.archive_bucket):
        archived.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    left = sum(
        len(page.get("Contents", []))
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=store.documents_bucket)
    )
    copies_ok = all(archived.get(target) == sizes[source] for source, target in pairs)
    return {
        "archived": len(archived),
        "copies_match_sizes": copies_ok,
        "sources_left": left,
        "ok": copies_ok and len(archived) == len(pairs) and left == 0,
    }


def run(stack, files: int, repeat: int, log, contestants=CONTESTANTS, seed: int = 42) -> dict:
    from retention.archive.store import ArchiveStore, document_archive_key
    from retention.policy import default_policy

    policy = default_policy()
    rule = next(r for r in policy.purpose("contracts").rules if r.name == "claims")  # vet invoices
    base = policy.storage_settings()
    storage_class = base.tiers[rule.tier].storage_class
    items = keys_and_sizes(files, seed)
    pool = random.Random(seed).randbytes(MAX_SIZE * 4)
    batch_key = "probative/contracts/claims/purge_month=2036-03/bench/claims-000000000001.parquet"
    pairs = [(key, document_archive_key(batch_key, key)) for key, _ in items]
    moto_pid = stack.s3.process.pid
    runs = []
    log(f"documents: {files:,} files, {sum(s for _, s in items) / 1e6:,.0f} MB, {repeat} repeats")
    for r in range(repeat):
        order = list(contestants[r % len(contestants) :]) + list(contestants[: r % len(contestants)])
        for name in order:
            tag = f"docs-{name.replace('_', '-').replace('^', 'p')}-{r}".lower()
            archive, documents = stack.fresh_buckets(tag)
            storage = base.with_env_overrides(
                {"RETENTION_ARCHIVE_BUCKET": archive, "RETENTION_DOCUMENTS_BUCKET": documents}
            )
            upload_s = upload(stack.s3_client(), documents, items, pool)
            client = stack.s3_client()  # fresh: its own connection pool (retention.archive.store.client_config)
            store = ArchiveStore(client, storage)
            server_cpu, client_cpu, started = _cpu_s(moto_pid), time.process_time(), time.perf_counter()
            DISPOSERS[name](client, store, pairs, storage_class)
            wall = time.perf_counter() - started
            run = {
                "contestant": name,
                "repeat": r,
                "files": files,
                "wall_s": wall,
                "files_per_s": files / wall,
                "client_cpu_s": time.process_time() - client_cpu,
                "server_cpu_s": _cpu_s(moto_pid) - server_cpu,
                "upload_s": upload_s,
                "load_average_1m": os.getloadavg()[0],  # the machine is shared: how busy it was
                "checks": _verify(stack.s3_client(), store, items, pairs),
            }
            runs.append(run)
            log(
                f"documents: {name:15} run {r + 1}/{repeat}: {wall:6.2f} s, {run['files_per_s']:6.0f} files/s, "
                f"CPU client {run['client_cpu_s']:.1f} s, S3 server {run['server_cpu_s']:.1f} s, "
                f"load {run['load_average_1m']:.1f}, "
                f"checks {'ok' if run['checks']['ok'] else 'FAILED ' + str(run['checks'])}"
            )
    stack.fresh_buckets("docs-done")  # free the S3 server's memory
    summary = {}
    for name in contestants:
        mine = [x for x in runs if x["contestant"] == name]
        wall = statistics.median(x["wall_s"] for x in mine)
        summary[name] = {
            "median_wall_s": wall,
            "files_per_s": files / wall,
            "median_client_cpu_s": statistics.median(x["client_cpu_s"] for x in mine),
            "median_server_cpu_s": statistics.median(x["server_cpu_s"] for x in mine),
            "walls_s": [round(x["wall_s"], 2) for x in mine],
            "load_average_1m": [round(x["load_average_1m"], 1) for x in mine],
            "all_checks_ok": all(x["checks"]["ok"] for x in mine),
        }
    ratios = {
        f"store_vs_{peer}": summary[peer]["median_wall_s"] / summary["store"]["median_wall_s"]
        for peer in contestants
        if peer != "store" and "store" in summary
    }
    return {
        "files": files,
        "bytes": sum(s for _, s in items),
        "sizes": [MIN_SIZE, MAX_SIZE],
        "storage_class": storage_class,
        "repeat": repeat,
        "summary": summary,
        "ratios": ratios,
        "target": {"store_vs_serial": ">= 5", "met": ratios.get("store_vs_serial", 0) >= 5},
        "all_checks_ok": all(x["checks"]["ok"] for x in runs),
        "runs": runs,
    }
