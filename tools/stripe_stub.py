"""A stand-in for the Stripe API on 127.0.0.1, started by the tests and by `make demo` (as moto
stands in for S3): answers the two calls the processor erasure makes, records every request,
and fails, stalls or holds on demand. Never a way to reach the real Stripe: demo and tests only.

    python -m tools.stripe_stub --port 25600

    POST   /v1/payment_methods/{pm}/detach   200 the payment method (customer null); 400 when
                                             already detached; 404 resource_missing when unknown
    DELETE /v1/customers/{cus}                200 {"deleted": true}; 404 resource_missing after
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_KEY = "sk_test_retention_stub"


@dataclass
class Recorded:
    method: str
    path: str
    authorization: str
    idempotency_key: str | None


@dataclass
class Hold:
    """The next request matching a path is held (unanswered) from ``reached`` until ``release``:
    a test acts while the processor call is in flight. Keep it shorter than the client's timeout."""

    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class StubState:
    requests: list[Recorded] = field(default_factory=list)
    detached: set[str] = field(default_factory=set)
    deleted_customers: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)  # ids the processor never knew (or purged)
    # substring of the path -> statuses to answer next, in order (then normal answers)
    failures: dict[str, list[int]] = field(default_factory=dict)
    # substring of the path -> seconds to stall the next matching request (a timeout)
    stalls: dict[str, list[float]] = field(default_factory=dict)
    # substring of the path -> holds for the next matching requests, in order
    holds: dict[str, list[Hold]] = field(default_factory=dict)
    # seconds every answer takes (the real API answers in 200-400 ms); requests answered at once, at most
    latency: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.detached.clear()
            self.deleted_customers.clear()
            self.missing.clear()
            self.failures.clear()
            self.stalls.clear()
            for pending in self.holds.values():
                for held in pending:
                    held.release.set()
            self.holds.clear()
            self.latency, self.max_in_flight = 0.0, self.in_flight

    def fail(self, path_part: str, *statuses: int) -> None:
        with self.lock:
            self.failures.setdefault(path_part, []).extend(statuses)

    def stall(self, path_part: str, seconds: float) -> None:
        with self.lock:
            self.stalls.setdefault(path_part, []).append(seconds)

    def hold(self, path_part: str) -> Hold:
        held = Hold()
        with self.lock:
            self.holds.setdefault(path_part, []).append(held)
        return held

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]


def _error(status: int, kind: str, message: str, code: str | None = None) -> tuple[int, dict]:
    body = {"error": {"type": kind, "message": message}}
    if code:
        body["error"]["code"] = code
    return status, body


class _Handler(BaseHTTPRequestHandler):
    state: StubState

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        state = self.state
        with state.lock:
            state.requests.append(
                Recorded(method, self.path, self.headers.get("Authorization", ""), self.headers.get("Idempotency-Key"))
            )
            stall = next((s.pop(0) for part, s in state.stalls.items() if part in self.path and s), 0.0)
            failure = next((f.pop(0) for part, f in state.failures.items() if part in self.path and f), None)
            held = next((h.pop(0) for part, h in state.holds.items() if part in self.path and h), None)
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            status, body = self._respond(method, stall or state.latency, held, failure)
        finally:
            # Out of flight before the answer is sent: a client calling one at a time sends its
            # next request as soon as it has the answer, maybe before this thread runs again.
            with state.lock:
                state.in_flight -= 1
        self._send(status, body)

    def _respond(self, method: str, stall: float, held: Hold | None, failure: int | None) -> tuple[int, dict]:
        if stall:
            time.sleep(stall)
        if held:
            held.reached.set()
            held.release.wait(60)
        return self._route(method, failure)

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", "req_stub")
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str, failure: int | None) -> tuple[int, dict]:
        state = self.state
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            return _error(401, "invalid_request_error", "Invalid API Key provided")
        if failure is not None:
            return _error(failure, "api_error", "Something went wrong on the stub's end.")
        if method == "POST" and (m := re.fullmatch(r"/v1/payment_methods/([^/]+)/detach", self.path)):
            pm = m.group(1)
            with state.lock:
                if pm in state.missing:
                    return _error(404, "invalid_request_error", f"No such PaymentMethod: '{pm}'", "resource_missing")
                if pm in state.detached:
                    return _error(
                        400,
                        "invalid_request_error",
                        "The payment method you provided is not attached to a customer so detachment is impossible.",
                    )
                state.detached.add(pm)
            return 200, {"id": pm, "object": "payment_method", "customer": None, "type": "card"}
        if method == "DELETE" and (m := re.fullmatch(r"/v1/customers/([^/]+)", self.path)):
            cus = m.group(1)
            with state.lock:
                if cus in state.missing or cus in state.deleted_customers:
                    return _error(404, "invalid_request_error", f"No such customer: '{cus}'", "resource_missing")
                state.deleted_customers.add(cus)
            return 200, {"id": cus, "object": "customer", "deleted": True}
        return _error(404, "invalid_request_error", f"Unrecognized request URL ({method}: {self.path})")

    def do_POST(self) -> None:  # noqa: N802
        self._answer("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._answer("DELETE")

    def do_GET(self) -> None:  # noqa: N802
        self._answer("GET")


class StripeStub:
    def __init__(self, port: int = 0) -> None:
        self.state = StubState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="stripe-stub", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StripeStub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def connection(self, *, retries: int = 2, timeout: float = 2.0) -> dict:
        """The Airflow connection `stripe_default` on this stub (AIRFLOW_CONN_STRIPE_DEFAULT)."""
        return {
            "conn_type": "generic",
            "host": self.url,
            "password": API_KEY,
            "extra": {"max_network_retries": retries, "timeout": timeout},
        }


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="A local stand-in for the Stripe API (demo and tests only)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    stub = StripeStub(args.port)
    print(f"Stripe stand-in on {stub.url}", flush=True)
    stub.server.serve_forever()


if __name__ == "__main__":
    main()
