"""Trader signatures for Python clients of the gridex API, from PROTOCOL.md and web/src/auth.rs:

- a command (order, cancel, replace) is signed over `gridex/v1/<type>\\n` + the canonical JSON of
  the message without `sig` (sorted keys, no whitespace; the restricted value set of PROTOCOL.md);
- a request is signed over `gridex/v1/request\\n` + the canonical JSON of
  {account, body_sha256, method, path (with the query), ts_ms}, sent as X-Gridex-Account,
  X-Gridex-Timestamp (unix ms, wall clock) and X-Gridex-Signature.

Used as `requests` auth (schemathesis) and `httpx` auth (the generated client). Needs PyNaCl.
"""
import hashlib
import json
import threading
import time
from urllib.parse import urlsplit

import httpx
import nacl.signing
import requests


def canonical(value) -> bytes:
    """Canonical JSON of the protocol's value set (integers, ASCII strings, booleans, objects)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Trader:
    """A household's account key (the 64 hex digits of a demo key file or `/api/v1/demo/households`)."""

    def __init__(self, seed_hex: str):
        self.key = nacl.signing.SigningKey(bytes.fromhex(seed_hex.strip()))
        self.account = self.key.verify_key.encode().hex()
        self._lock = threading.Lock()
        self._last_ts_ms = 0
        self._last_nonce = 0

    def sign_command(self, message: dict) -> dict:
        """`message` (with `type`, without `sig`) and its signature."""
        unsigned = {k: v for k, v in message.items() if k != "sig"}
        tag = f"gridex/v1/{unsigned['type']}\n".encode()
        return {**unsigned, "sig": self.key.sign(tag + canonical(unsigned)).signature.hex()}

    def next_nonce(self) -> int:
        """Strictly increasing and at least the wall clock in microseconds, above the demo agent's nonces."""
        with self._lock:
            self._last_nonce = max(self._last_nonce + 1, time.time_ns() // 1000)
            return self._last_nonce

    def _ts_ms(self) -> int:
        # Each signed request is accepted once: two identical requests in one millisecond would be
        # one request twice, so the timestamp moves on by at least one.
        with self._lock:
            self._last_ts_ms = max(self._last_ts_ms + 1, time.time_ns() // 1_000_000)
            return self._last_ts_ms

    def request_headers(self, method: str, path_and_query: str, body: bytes) -> dict:
        ts_ms = self._ts_ms()
        document = {
            "account": self.account,
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "method": method.upper(),
            "path": path_and_query,
            "ts_ms": ts_ms,
        }
        signature = self.key.sign(b"gridex/v1/request\n" + canonical(document)).signature.hex()
        return {
            "X-Gridex-Account": self.account,
            "X-Gridex-Timestamp": str(ts_ms),
            "X-Gridex-Signature": signature,
        }


def _path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class RequestsAuth(requests.auth.AuthBase):
    """Signs a prepared `requests` request (its final path, query and body bytes).

    With `only_with_placeholder`, signs only a request that carries some X-Gridex-Signature already
    (schemathesis fills the security scheme's header with a generated value): when schemathesis
    leaves the header out on purpose, to see an unauthenticated request refused, it stays out.
    """

    def __init__(self, trader: Trader, only_with_placeholder: bool = False):
        self.trader = trader
        self.only_with_placeholder = only_with_placeholder

    def __call__(self, request):
        if self.only_with_placeholder and "X-Gridex-Signature" not in request.headers:
            return request
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        request.headers.update(self.trader.request_headers(request.method, _path_and_query(request.url), body))
        return request


class HttpxAuth(httpx.Auth):
    """Signs an `httpx` request (the generated client's)."""

    requires_request_body = True

    def __init__(self, trader: Trader):
        self.trader = trader

    def auth_flow(self, request):
        path = request.url.raw_path.decode()
        request.headers.update(self.trader.request_headers(request.method, path, request.content))
        yield request
