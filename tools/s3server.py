"""The demo's S3 server: moto's server mode, with its S3 state kept in a file across restarts.

moto keeps buckets in memory; the demo's database remembers archive objects (manifest, version
ids, Object Lock dates). This wrapper loads the buckets from `--state` when it starts and writes
them back, atomically, on SIGTERM/SIGINT (what `make down` sends) and every `--save-every`
seconds when something changed, so that after `make down` and `make demo` buckets, objects,
version ids, checksums and locks are what they were. Loopback only.

    python -m tools.s3server --port 25500 --state .local/s3/state.pickle
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import sys
import threading
from pathlib import Path

FORMAT = 1


def _backends():
    from moto.s3.models import s3_backends

    return s3_backends


def snapshot() -> dict:
    """The buckets of every account and partition (moto's objects, keys pickled with their bytes)."""
    backends = _backends()
    state = {}
    for account in list(backends.keys()):
        for partition in list(backends[account].keys()):
            buckets = backends[account][partition].buckets
            if buckets:
                state[(account, partition)] = dict(buckets)
    return {"format": FORMAT, "buckets": state}


def fingerprint(state: dict) -> tuple:
    """Cheap change detector: bucket names and key version ids."""
    items = []
    for (account, partition), buckets in sorted(state["buckets"].items()):
        for name, bucket in sorted(buckets.items()):
            versions = tuple(
                sorted(
                    (k, getattr(v, "version_id", None), getattr(v, "lock_until", None))
                    for k, vs in bucket.keys.iterlists()
                    for v in vs or ()  # None: the key was deleted by a request meanwhile
                )
            )
            items.append((account, partition, name, versions))
    return tuple(items)


def save(path: Path) -> tuple:
    state = snapshot()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        pickle.dump(state, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return fingerprint(state)


def load(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as src:
        state = pickle.load(src)  # noqa: S301 - our own file, in the git-ignored state folder
    if state.get("format") != FORMAT:
        raise SystemExit(f"{path}: unknown S3 state format {state.get('format')!r}; remove it or run `make reset`")
    backends = _backends()
    count = 0
    for (account, partition), buckets in state["buckets"].items():
        backends[account][partition].buckets.update(buckets)
        count += len(buckets)
    return count


def _quietly(action):
    """A save races the server's threads (a dict changing size mid-pickle, a key deleted while it
    is read): try again later. Any error: an exception here would end the main thread, and the
    server with it (seen: a purge deleting objects during a save stopped the demo's S3)."""
    try:
        return action()
    except Exception as exc:  # noqa: BLE001 - the server must outlive a failed save
        print(f"s3server: state not saved this time ({type(exc).__name__}: {exc})", flush=True)
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True, help="file holding the S3 state")
    parser.add_argument("--save-every", type=float, default=30.0, help="seconds between saves when changed")
    args = parser.parse_args(argv)

    from moto.server import ThreadedMotoServer

    loaded = load(args.state)
    print(f"s3server: {loaded} bucket(s) loaded from {args.state}", flush=True)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=True)
    server.start()
    print(f"s3server: listening on http://127.0.0.1:{args.port}", flush=True)

    stop = threading.Event()

    def _stop(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    last = _quietly(lambda: fingerprint(snapshot()))
    while not stop.wait(args.save_every):
        current = _quietly(lambda: fingerprint(snapshot()))
        if current is not None and current != last:
            last = _quietly(lambda: save(args.state)) or last
    for _ in range(5):  # requests may still be in flight
        if _quietly(lambda: save(args.state)) is not None:
            break
    print(f"s3server: state saved to {args.state}", flush=True)
    server.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
