"""Tests switchboard's relay pool client (`switchboard publish` / `switchboard subscribe`)
against other relays and under faults.

Run:
    SWITCHBOARD_BIN=/work/main/.build/debug/switchboard \
        /tmp/venvtest/bin/python -m pytest -q /work/main/Interop/test_pool_interop.py

Relays used (all bound to 127.0.0.1):
  * rust-nostr's own relay. nostr-sdk 0.45.1's Python binding DOES offer one:
    `LocalRelayBuilder().addr(ip).port(p)....build()` -> `LocalRelay`, then
    `await relay.run()` (returns at once; the relay runs on rust-nostr's tokio
    runtime), `await relay.url()`, `relay.shutdown()`. Found by introspection
    (dir(nostr_sdk): LocalRelay, LocalRelayBuilder, LocalRelayBuilderNip42, ...).
    Notes: `.port(0)` binds a free port but `url()` then says ":0", so a free
    port is picked here and passed explicitly. A `WritePolicy` implemented in
    Python (`admit_event` -> WritePolicyResult.REJECT(msg)) makes it refuse an
    event; rust-nostr prefixes the message with "blocked: ". The Python policy
    is called back on the asyncio loop registered with
    nostr_sdk.uniffi_set_event_loop, so rust-nostr objects live on one
    background loop thread here (`aio` fixture) and are shut down and dropped
    on that loop (dropping a LocalRelay after its loop has gone segfaulted the
    interpreter at exit in a probe).
  * The Python relay `nostr_relay` (pip nostr-relay==1.14), started as
    `nostr-relay -c <config.yaml> serve --use-uvicorn` (uvicorn: one process,
    so SIGTERM/SIGKILL reach the server itself). Config keys (nostr_relay/
    config.py, web.py run_with_uvicorn): `gunicorn: {bind: "127.0.0.1:PORT",
    host: 127.0.0.1}` (run_with_uvicorn takes the port from `bind` and passes
    the other keys to uvicorn.Config), `storage: {"sqlalchemy.url":
    "sqlite+aiosqlite:///<path>", validators: [...]}`. It prints nothing on
    stdout when ready, so readiness is a TCP connect poll. Quirks seen
    (nostr_relay 1.14, web.py start_client):
      - a refused EVENT is answered ["OK", "", false, "<reason>"]: the event id
        is EMPTY, so no client can match it to its event, and only after a
        "throttle" sleep (2 s, doubling for each refusal, and kept for every
        later message on that connection). The pool therefore reports such an
        event as "timed out", never as accepted.
      - a duplicate EVENT gets ["OK", id, false, "duplicate: exists"] (NIP-01
        says true); the relay has the event, so the pool counts it as accepted.
      - it advertises its URL with a trailing slash (ws://127.0.0.1:PORT/);
        the pool normalises it away.
      - it refuses events older than `oldest_event` (1 year) or more than 1 h
        in the future ("invalid: <ts> is too old" / "is in the future").
  * switchboard's own relay (`switchboard relay`), and small raw WebSocket
    servers written here (the `websockets` package) for misbehaving relays.
  * For wss://, a TLS-terminating TCP proxy (Python's ssl module, i.e.
    OpenSSL) in front of our relay, with a throw-away CA and server
    certificates made by the `openssl` command line tool.

Every process started is stopped at teardown (SIGTERM, then SIGKILL after
STOP_TIMEOUT); a relay or long-running subscriber that died during a test
fails it. Waits are for a condition with a deadline, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.server import serve as ws_serve

import nostr_sdk
from nostr_sdk import LocalRelayBuilder, RateLimit, WritePolicy, WritePolicyResult

from conftest import SEED, terminate
from test_relay_interop import (
    as_dict,
    assert_published,
    hexid,
    make_event,
    new_keys,
    now,
    nostr_client,
    pk,
    publish,
)

START_TIMEOUT = 10.0        # a switchboard relay prints its URL within this
NOSTR_RELAY_START = 25.0    # nostr_relay runs its alembic migrations first
STOP_TIMEOUT = 5.0          # SIGTERM -> exit
ONE_SHOT_LIMIT = 20.0       # a `switchboard publish` / `subscribe --close-on-eose` run
ARRIVE = 8.0                # an event reaches a running subscriber
RECONNECT = 20.0            # the pool reconnects to a restarted relay and resumes
QUIET = 1.0                 # how long "nothing more arrives" is watched
STEP = 10.0                 # one rust-nostr client operation on the loop thread

ENV = {k: v for k, v in os.environ.items() if k not in ("SWITCHBOARD_AUTH_SECRET_KEY",
                                                         "SWITCHBOARD_SECRET_KEY")}


# --------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def says_draining(health: str, timeout: float = 5) -> bool:
    """Polls a daemon's /health until it says 503 (stopping, draining what is in flight); false if it never does
    within `timeout`, or if the listener goes away first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(health, timeout=2).close()
        except urllib.error.HTTPError as refused:
            return refused.code == 503
        except urllib.error.URLError:
            return False  # the listener is gone: it did not stay up while the daemon drained
        except OSError:
            pass  # a slow answer (a loaded machine): ask again
        time.sleep(0.05)
    return False


def wait_port(port: int, timeout: float, proc=None) -> bool:
    """True once something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def dead_port():
    """A port nobody listens on: bound (so nothing else can take it) but not listening,
    so connecting is refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

class Proc:
    """A child process whose stdout lines are collected by a thread; stderr goes to a file."""

    def __init__(self, argv, stderr_path: Path, name: str, must_survive: bool):
        self.argv = [str(a) for a in argv]
        self.name = name
        self.must_survive = must_survive
        self.stopped_by_test = False
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=ENV)
        self.lines: list[str] = []
        self.eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        try:
            for raw in iter(self.proc.stdout.readline, b""):
                with self._cond:
                    self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self.eof = True
                self._cond.notify_all()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def logged_errors(self) -> list:
        """The lines logged at level error or critical (swift-log's format: time, level, label)."""
        return [line for line in self.stderr_path.read_text(errors="replace").splitlines()
                if line.split(" ", 2)[1:2] in (["error"], ["critical"])]

    def snapshot(self) -> list:
        with self._cond:
            return list(self.lines)

    def wait_for(self, pred, timeout: float, what: str):
        """Waits until pred(lines) is truthy; returns its value. Fails on timeout / EOF."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = pred(list(self.lines))
                if value:
                    return value
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
        pytest.fail(f"[seed {SEED}] {self.name}: no {what} within {timeout}s"
                    f"{' (its stdout ended)' if self.eof else ''}\n{self.describe()}", pytrace=False)

    def stderr_text(self) -> str:
        # After stop() the handle is closed (flush raises ValueError); the file is still there to read.
        with contextlib.suppress(OSError, ValueError):
            self._stderr.flush()
        try:
            return self.stderr_path.read_text("utf-8", "replace")
        except OSError:
            return "?"

    def describe(self, limit=4000) -> str:
        out = "\n".join(self.snapshot())
        err = self.stderr_text()
        return (f"  $ {' '.join(self.argv)}\n  returncode: {self.proc.poll()}\n"
                f"  stdout ({len(self.lines)} lines):\n{out[-limit:]}\n"
                f"  stderr tail:\n{err[-limit:]}")

    def kill(self):
        """SIGKILL (the test's fault injection)."""
        self.stopped_by_test = True
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT)

    def stop(self):
        """SIGTERM, wait, SIGKILL. Returns (was_alive, exited_on_sigterm)."""
        was_alive, exited = terminate(self.proc, STOP_TIMEOUT)
        self._reader.join(2)
        with contextlib.suppress(Exception):
            self._stderr.close()
        return was_alive, exited


class Procs:
    def __init__(self, switchboard_path: str, tmp_path: Path):
        self.sb = switchboard_path
        self.tmp = tmp_path
        self.started: list[Proc] = []

    def binary(self, name: str) -> str:
        """Another Switchboard executable (bunker, wallet-bridge), from the directory of $SWITCHBOARD_BIN."""
        path = Path(self.sb).parent / name
        if not path.exists():
            pytest.fail(f"{path} not built (swift build builds it)", pytrace=False)
        return str(path)

    def run(self, name: str, *args) -> str:
        """Runs executable `name` with `args` to completion; its stdout, stripped (a nonzero exit fails the test)."""
        result = subprocess.run([self.binary(name), *args], capture_output=True, timeout=60, check=False)
        assert result.returncode == 0, f"{name} {args}: {result.stderr.decode()}"
        return result.stdout.decode().strip()

    def start(self, argv, name: str, must_survive=True) -> Proc:
        proc = Proc(argv, self.tmp / f"{len(self.started):02d}-{name}.stderr", name, must_survive)
        self.started.append(proc)
        return proc

    # --- switchboard relay -------------------------------------------------
    def sb_relay(self, name="relay", port=0, db=None, auth=False) -> Proc:
        argv = [self.sb, "relay", "--host", "127.0.0.1", "--port", str(port)]
        if db is not None:
            argv += ["--db", str(db)]
        if auth:
            argv += ["--auth-required"]
        relay = self.start(argv, name)
        relay.url = relay.wait_for(lambda lines: lines and lines[0].strip(), START_TIMEOUT,
                                   "ws://HOST:PORT line")
        if not relay.url.startswith("ws://127.0.0.1:") or (port and not relay.url.endswith(f":{port}")):
            pytest.fail(f"unexpected relay URL line {relay.url!r}\n{relay.describe()}", pytrace=False)
        relay.port = int(relay.url.rsplit(":", 1)[1])
        return relay

    # --- nostr_relay ---------------------------------------------------------
    def nostr_relay(self, name="nostr_relay") -> Proc:
        exe = Path(sys.executable).parent / "nostr-relay"
        if not exe.exists():
            pytest.fail(f"nostr-relay not installed next to {sys.executable} "
                        f"(pip install -r Interop/requirements.txt)", pytrace=False)
        port = free_port()
        db = self.tmp / f"{name}.sqlite3"
        config = self.tmp / f"{name}.yaml"
        config.write_text(
            "DEBUG: false\n"
            "storage:\n"
            f"  sqlalchemy.url: sqlite+aiosqlite:///{db}\n"
            "  validators:\n"
            "    - nostr_relay.validators.is_signed\n"
            "    - nostr_relay.validators.is_recent\n"
            "gunicorn:\n"
            f"  bind: 127.0.0.1:{port}\n"
            "  host: 127.0.0.1\n"
            "  workers: 1\n"
            "  loglevel: warning\n"
            "authentication:\n"
            "  enabled: false\n"
            "verification:\n"
            "  nip05_verification: disabled\n")
        relay = self.start([exe, "-c", config, "serve", "--use-uvicorn"], name)
        if not wait_port(port, NOSTR_RELAY_START, relay):
            relay.stop()
            pytest.fail(f"nostr_relay did not listen on 127.0.0.1:{port} within "
                        f"{NOSTR_RELAY_START}s\n{relay.describe()}", pytrace=False)
        relay.port = port
        relay.url = f"ws://127.0.0.1:{port}"
        return relay

    # --- switchboard subscribe (long-running) --------------------------------
    def subscriber(self, relays, filters, auth_sec=None, name="subscriber", extra=()) -> "Subscriber":
        argv = [self.sb, "subscribe", "--verbose", *relay_args(relays), *extra]
        for f in filters:
            argv += ["--filter", json.dumps(f)]
        if auth_sec:
            argv += ["--auth-sec", auth_sec]
        proc = self.start(argv, name)
        return Subscriber(proc)

    def teardown(self):
        problems = []
        # Newest first: services stop while the relays they were started on are still up, as in a real
        # shutdown (a reply whose relay vanished first would keep a service in its grace period past STOP_TIMEOUT).
        for proc in reversed(self.started):
            was_alive, exited = proc.stop()
            if proc.stopped_by_test or not proc.must_survive:
                continue
            if not was_alive:
                problems.append(f"{proc.name} died during the test:\n{proc.describe()}")
            elif not exited:
                problems.append(f"{proc.name} did not exit within {STOP_TIMEOUT}s of SIGTERM:\n"
                                f"{proc.describe()}")
        return problems


@pytest.fixture
def procs(switchboard, tmp_path, aio):
    # Set up after `aio`, so torn down before it: processes stop while rust-nostr relays in its loop still run.
    manager = Procs(switchboard.path, tmp_path)
    yield manager
    problems = manager.teardown()
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def relay_args(relays) -> list:
    return [x for r in relays for x in ("--relay", r if isinstance(r, str) else r.url)]


# --------------------------------------------------------------------------
# switchboard subscribe output
# --------------------------------------------------------------------------

def parse_sub_line(line: str) -> dict:
    try:
        obj = json.loads(line)
    except ValueError:
        pytest.fail(f"[seed {SEED}] subscribe printed a non-JSON line: {line!r}", pytrace=False)
    kinds = [k for k in ("event", "eose", "closed") if k in obj]
    assert isinstance(obj, dict) and isinstance(obj.get("relay"), str) and len(kinds) == 1, (
        f"[seed {SEED}] unexpected subscribe line {line!r}")
    if "eose" in obj:
        assert obj["eose"] is True, line
    if "closed" in obj:
        assert isinstance(obj["closed"], str), line
    return obj


def parse_sub(lines) -> list:
    return [parse_sub_line(line) for line in lines if line.strip()]


def events_of(items) -> list:
    return [(i["relay"], i["event"]) for i in items if "event" in i]


def eose_relays(items) -> list:
    return [i["relay"] for i in items if "eose" in i]


class Subscriber:
    def __init__(self, proc: Proc):
        self.proc = proc

    def items(self) -> list:
        return parse_sub(self.proc.snapshot())

    def events(self) -> list:
        return events_of(self.items())

    def wait_ids(self, wanted, timeout=ARRIVE, what="events"):
        wanted = set(wanted)

        def done(lines):
            got = {e["id"] for _, e in events_of(parse_sub(lines))}
            return wanted <= got

        self.proc.wait_for(done, timeout, f"{what} {sorted(wanted)}")

    def wait_eose(self, relays, timeout=ARRIVE):
        wanted = {r if isinstance(r, str) else r.url for r in relays}
        self.proc.wait_for(lambda lines: wanted <= set(eose_relays(parse_sub(lines))), timeout,
                           f"EOSE from {sorted(wanted)}")

    def assert_once(self, expected: dict, sources: dict | None = None):
        """expected: id -> event dict. Every expected event printed exactly once (and equal
        to what was published), nothing else. sources: id -> set of allowed relay URLs."""
        got = self.events()
        counts = {}
        for relay, event in got:
            counts[event["id"]] = counts.get(event["id"], 0) + 1
        dupes = {i: n for i, n in counts.items() if n > 1}
        missing = set(expected) - set(counts)
        extra = set(counts) - set(expected)
        assert not dupes and not missing and not extra, (
            f"[seed {SEED}] duplicates={dupes} missing={sorted(missing)} unexpected={sorted(extra)}\n"
            f"{self.proc.describe()}")
        for relay, event in got:
            assert event == expected[event["id"]], (event, expected[event["id"]])
            if sources and event["id"] in sources:
                assert relay in sources[event["id"]], (
                    f"[seed {SEED}] {event['id']} ({event['content']!r}) came from {relay}, "
                    f"expected one of {sorted(sources[event['id']])}")


# --------------------------------------------------------------------------
# One-shot switchboard runs
# --------------------------------------------------------------------------

class OneShot:
    def __init__(self, argv, stdin: str, limit: float):
        self.argv = [str(a) for a in argv]
        self.stdin = stdin
        start = time.monotonic()
        try:
            proc = subprocess.run(self.argv, input=stdin.encode(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, timeout=limit, env=ENV)
        except subprocess.TimeoutExpired as exc:
            self.elapsed = time.monotonic() - start
            pytest.fail(f"[seed {SEED}] still running after {limit}s (killed):\n  $ {' '.join(self.argv)}\n"
                        f"  stdin: {stdin[:600]!r}\n  stdout: {(exc.stdout or b'').decode()[-2000:]}\n"
                        f"  stderr: {(exc.stderr or b'').decode()[-2000:]}", pytrace=False)
        self.elapsed = time.monotonic() - start
        self.returncode = proc.returncode
        self.stdout = proc.stdout.decode("utf-8", "replace")
        self.stderr = proc.stderr.decode("utf-8", "replace")
        self.lines = [line for line in self.stdout.splitlines() if line.strip()]

    def describe(self) -> str:
        return (f"[seed {SEED}] $ {' '.join(self.argv)}\n  exit {self.returncode} after {self.elapsed:.1f}s\n"
                f"  stdin: {self.stdin[:600]!r}\n  stdout:\n{self.stdout[-3000:]}\n"
                f"  stderr tail:\n{self.stderr[-2000:]}")


def sb_publish(procs: Procs, relays, events, timeout=None, auth_sec=None, limit=ONE_SHOT_LIMIT, extra=()):
    """Runs `switchboard publish`; returns (run, {event id: {relay: result}})."""
    argv = [procs.sb, "publish", *relay_args(relays), *extra]
    if timeout is not None:
        argv += ["--timeout", str(timeout)]
    if auth_sec:
        argv += ["--auth-sec", auth_sec]
    run = OneShot(argv, "".join(e.as_json() + "\n" for e in events), limit)
    results = {}
    for line in run.lines:
        try:
            obj = json.loads(line)
        except ValueError:
            pytest.fail(f"publish printed a non-JSON line {line!r}\n{run.describe()}", pytrace=False)
        assert isinstance(obj, dict) and set(obj) == {"id", "results"}, run.describe()
        assert all(isinstance(v, str) for v in obj["results"].values()), run.describe()
        results[obj["id"]] = obj["results"]
    assert [json.loads(line)["id"] for line in run.lines] == [hexid(e) for e in events], (
        f"one line per event, in input order\n{run.describe()}")
    # Result keys are normalised URLs (no trailing slash).
    urls = {(r if isinstance(r, str) else r.url).rstrip("/") for r in relays}
    for event_id, per_relay in results.items():
        assert set(per_relay) == urls, f"results for {event_id} name {sorted(per_relay)}, " \
                                       f"expected {sorted(urls)}\n{run.describe()}"
    return run, results


def sb_fetch(procs: Procs, relays, filters, auth_sec=None, limit=ONE_SHOT_LIMIT, eose_timeout=3, extra=()):
    """`switchboard subscribe --close-on-eose --timeout eose_timeout`; returns (run, parsed items)."""
    argv = [procs.sb, "subscribe", *relay_args(relays), "--close-on-eose", "--timeout", str(eose_timeout),
            *extra]
    for f in filters:
        argv += ["--filter", json.dumps(f)]
    if auth_sec:
        argv += ["--auth-sec", auth_sec]
    run = OneShot(argv, "", limit)
    return run, parse_sub(run.lines)


def assert_all(results: dict, relay_url: str, expected: str, run: OneShot):
    for event_id, per_relay in results.items():
        assert per_relay[relay_url] == expected, (
            f"{event_id} at {relay_url}: {per_relay[relay_url]!r}, expected {expected!r}\n{run.describe()}")


def by_id(*events) -> dict:
    return {hexid(e): as_dict(e) for e in events}


def secret_hex(keys) -> str:
    return keys.secret_key().to_hex()


# --------------------------------------------------------------------------
# A background asyncio loop (rust-nostr relay/client, raw WebSocket servers)
# --------------------------------------------------------------------------

class LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="aio")
        self.thread.start()
        self.finalizers = []   # async callables run at close, last first
        nostr_sdk.uniffi_set_event_loop(self.loop)

    def call(self, coro, timeout=STEP * 2):
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            pytest.fail(f"[seed {SEED}] async step did not finish within {timeout}s", pytrace=False)

    def close(self):
        for fin in reversed(self.finalizers):
            with contextlib.suppress(BaseException):
                self.call(fin(), 10)
        self.finalizers.clear()

        async def collect():
            gc.collect()
            await asyncio.sleep(0.1)
        with contextlib.suppress(BaseException):
            self.call(collect(), 5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        nostr_sdk.uniffi_set_event_loop(None)


@pytest.fixture
def aio():
    loop = LoopThread()
    yield loop
    loop.close()


class RejectPolicy(WritePolicy):
    """rust-nostr LocalRelay write policy: refuse events whose content contains 'reject'."""

    def __init__(self):
        self.seen = []

    async def admit_event(self, event, socket_addr):
        self.seen.append(event.id().to_hex())
        if "reject" in event.content():
            return WritePolicyResult.REJECT("this relay refuses rejects")
        return WritePolicyResult.ACCEPT()


class RustRelay:
    def __init__(self, relay, url, policy):
        self.relay, self.url, self.policy = relay, url, policy


def start_rust_relay(aio: LoopThread, notes_per_minute: int | None = None) -> RustRelay:
    """rust-nostr's LocalRelay on a free port; `notes_per_minute` lifts its default write rate limit
    (60 events per minute per connection) for load tests."""
    port = free_port()
    policy = RejectPolicy()
    holder = {}

    async def start():
        builder = LocalRelayBuilder().addr("127.0.0.1").port(port).write_policy(policy)
        if notes_per_minute is not None:
            builder = builder.rate_limit(RateLimit(max_reqs=500, notes_per_minute=notes_per_minute))
        relay = builder.build()
        await relay.run()
        holder["relay"] = relay
        return str(await relay.url())

    url = aio.call(start())

    async def stop():
        relay = holder.pop("relay", None)
        if relay is not None:
            relay.shutdown()
            del relay
            gc.collect()
            await asyncio.sleep(0.05)
    aio.finalizers.append(stop)
    assert url.rstrip("/") == f"ws://127.0.0.1:{port}", url
    assert wait_port(port, 5), f"rust-nostr LocalRelay not listening on {port}"
    return RustRelay(holder["relay"], f"ws://127.0.0.1:{port}", policy)


def rust_publish(aio: LoopThread, url: str, *events):
    """Publishes with rust-nostr's Client (a fresh connection); each must be accepted."""
    async def body():
        async with nostr_client(url) as client:
            for event in events:
                assert_published(await publish(client, event), event, f"at {url}")
    aio.call(body(), STEP * (1 + len(events)))


class RawServer:
    """A WebSocket server on 127.0.0.1 (port 0) with a custom handler; runs on the aio loop."""

    def __init__(self, aio: LoopThread, handler):
        self.received = []
        self.connections = 0

        async def wrapped(ws):
            self.connections += 1
            await handler(self, ws)

        async def start():
            server = await ws_serve(wrapped, "127.0.0.1", 0)
            return server

        self.server = aio.call(start())
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"

        async def stop():
            self.server.close()
            await asyncio.wait_for(self.server.wait_closed(), 5)
        aio.finalizers.append(stop)


# ==========================================================================
# 1. Against rust-nostr's own relay (LocalRelay, in-process)
# ==========================================================================

def test_pool_against_rust_nostr_local_relay(procs, aio, rng):
    relay = start_rust_relay(aio)
    author = new_keys(rng)
    base = now() - 100
    stored = [make_event(author, 1, f"stored {i}", tags=[["t", "pool"]], created_at=base + i)
              for i in range(4)]

    run, results = sb_publish(procs, [relay.url], stored, timeout=5)
    assert run.returncode == 0, run.describe()
    assert_all(results, relay.url, "accepted", run)
    # The relay really got them (its write policy saw each one).
    ids = [hexid(e) for e in stored]
    assert set(ids) <= set(relay.policy.seen), relay.policy.seen

    # Refused by the relay: rejected with the relay's message, exit 1.
    refused = make_event(author, 1, "please reject this one")
    run, results = sb_publish(procs, [relay.url], [refused], timeout=5)
    assert run.returncode == 1, run.describe()
    assert results[hexid(refused)][relay.url] == "rejected: blocked: this relay refuses rejects", \
        run.describe()

    # Publishing a stored event again: rust-nostr answers OK true "duplicate:" -> accepted.
    run, results = sb_publish(procs, [relay.url], stored[:1], timeout=5)
    assert run.returncode == 0 and results[ids[0]][relay.url] == "accepted", run.describe()

    # Stored: exactly the accepted ones, each once, byte-identical, then EOSE; exit 0.
    flt = {"kinds": [1], "authors": [pk(author)]}
    run, items = sb_fetch(procs, [relay.url], [flt])
    assert run.returncode == 0, run.describe()
    got = events_of(items)
    assert sorted(e["id"] for _, e in got) == sorted(ids), run.describe()
    assert all(r == relay.url and e == as_dict(ev) for (r, e), ev in
               zip(sorted(got, key=lambda x: x[1]["id"]), sorted(stored, key=hexid))), run.describe()
    assert eose_relays(items) == [relay.url], run.describe()
    assert items[-1] == {"relay": relay.url, "eose": True}, "EOSE comes after the stored events"

    # Live: a running subscriber gets what rust-nostr's Client publishes.
    sub = procs.subscriber([relay.url], [flt])
    sub.wait_eose([relay.url])
    live = make_event(author, 1, "live from rust-nostr's client")
    rust_publish(aio, relay.url, live)
    sub.wait_ids([hexid(live)])
    # Also a live event published through the pool itself.
    live2 = make_event(author, 1, "live through switchboard publish")
    run, results = sb_publish(procs, [relay.url], [live2], timeout=5)
    assert results[hexid(live2)][relay.url] == "accepted", run.describe()
    sub.wait_ids([hexid(live2)])
    time.sleep(QUIET)   # watch for stragglers / duplicates
    sub.assert_once(by_id(*stored, live, live2))


# ==========================================================================
# 2. Against the Python relay nostr_relay 1.14
# ==========================================================================

def test_pool_against_python_nostr_relay(procs, aio, rng):
    relay = procs.nostr_relay()
    author = new_keys(rng)
    base = now() - 100
    stored = [make_event(author, 1, f"stored {i}", tags=[["t", "pool"]], created_at=base + i)
              for i in range(4)]

    # The trailing-slash form nostr_relay advertises is normalised by the pool.
    run, results = sb_publish(procs, [relay.url + "/"], stored, timeout=5)
    assert run.returncode == 0, run.describe()
    assert_all(results, relay.url, "accepted", run)

    flt = {"kinds": [1], "authors": [pk(author)]}
    run, items = sb_fetch(procs, [relay.url + "/"], [flt])
    assert run.returncode == 0, run.describe()
    got = events_of(items)
    assert sorted(e["id"] for _, e in got) == sorted(hexid(e) for e in stored), run.describe()
    assert {r for r, _ in got} | set(eose_relays(items)) == {relay.url}, (
        f"relay URL not normalised (trailing slash kept?)\n{run.describe()}")
    for _, event in got:
        assert event == by_id(*stored)[event["id"]]
    assert eose_relays(items) == [relay.url] and items[-1].get("eose"), run.describe()

    # Live: rust-nostr's Client publishes to nostr_relay while switchboard subscribes.
    sub = procs.subscriber([relay.url], [flt])
    sub.wait_eose([relay.url])
    live = make_event(author, 1, "live from rust-nostr to nostr_relay")
    rust_publish(aio, relay.url, live)
    sub.wait_ids([hexid(live)])

    # Quirk: nostr_relay answers a duplicate with OK false "duplicate: exists" (NIP-01 says
    # true). The relay has the event, which is what a publish asks: the pool counts it accepted.
    run, results = sb_publish(procs, [relay.url], stored[:1], timeout=5)
    assert results[hexid(stored[0])][relay.url] == "accepted", run.describe()
    assert run.returncode == 0, run.describe()

    # Refused (created_at far in the past). Quirk: nostr_relay's OK carries an EMPTY event id
    # (and comes after a 2 s throttle), so the pool cannot match it: it must not report
    # "accepted"; "timed out" is what it can honestly say (or the refusal, if it matched it).
    ancient = make_event(author, 1, "from 1970", created_at=1000)
    run, results = sb_publish(procs, [relay.url], [ancient], timeout=4)
    verdict = results[hexid(ancient)][relay.url]
    assert verdict == "timed out" or verdict.startswith("rejected: invalid:"), run.describe()
    assert run.returncode == 1, run.describe()

    time.sleep(QUIET)
    sub.assert_once(by_id(*stored, live))


# ==========================================================================
# 3. A relay killed mid-stream and restarted on the same port and database
# ==========================================================================

def count_failures(sub: Subscriber, url: str) -> int:
    """Connection failures the pool logged (--verbose) for url. Only a timing aid."""
    return sum(1 for line in sub.proc.stderr_text().splitlines()
               if f"nostr.relay={url} " in line and "failed" in line)


def test_relay_killed_and_restarted(procs, aio, rng, tmp_path):
    port_a = free_port()
    db_a = tmp_path / "a.sqlite"
    relay_a = procs.sb_relay("relay-A", port=port_a, db=db_a)
    relay_b = procs.sb_relay("relay-B")
    A, B = relay_a.url, relay_b.url
    author = new_keys(rng)
    flt = {"kinds": [1], "authors": [pk(author)]}
    published = {}      # id -> event dict: everything published anywhere
    sources = {}        # id -> relays that have it

    def note(event, *relays):
        published[hexid(event)] = as_dict(event)
        sources[hexid(event)] = set(relays)

    sub = procs.subscriber([A, B], [flt])
    sub.wait_eose([A, B])

    # Phase 1: both up. Events on both relays arrive once.
    both = [make_event(author, 1, f"on both {i}") for i in range(3)]
    run, results = sb_publish(procs, [A, B], both, timeout=5)
    assert run.returncode == 0, run.describe()
    assert_all(results, A, "accepted", run)
    assert_all(results, B, "accepted", run)
    for e in both:
        note(e, A, B)
    sub.wait_ids([hexid(e) for e in both], what="events published to A and B")
    sub.assert_once(published, sources)

    # Phase 2: SIGKILL A. Events to B only arrive once, from B.
    relay_a.kill()
    failures_before = count_failures(sub, A)
    log_lines_at_kill = len(sub.proc.stderr_text().splitlines())
    b_only = [make_event(author, 1, f"B only while A is down {i}") for i in range(2)]
    rust_publish(aio, B, *b_only)
    for e in b_only:
        note(e, B)
    sub.wait_ids([hexid(e) for e in b_only], what="events published to B while A is down")

    # The pool's publish while A is down: A unreachable (quickly), B accepted; exit 0.
    during = make_event(author, 1, "published to A and B while A is down")
    run, results = sb_publish(procs, [A, B], [during], timeout=2, limit=15)
    assert results[hexid(during)][A].startswith("unreachable: "), run.describe()
    assert results[hexid(during)][B] == "accepted", run.describe()
    assert run.returncode == 0, run.describe()
    assert run.elapsed < 10, f"publish took {run.elapsed:.1f}s with one relay down\n{run.describe()}"
    note(during, B)
    sub.wait_ids([hexid(during)])

    # Let the pool's backoff grow a little (a few failed reconnects to A), so that the
    # restart below lands between two attempts. Soft: only a timing aid.
    deadline = time.monotonic() + 6
    while count_failures(sub, A) < failures_before + 3 and time.monotonic() < deadline:
        time.sleep(0.1)

    # Phase 3: restart A on the same port with the same database; publish to A only,
    # straight away (most likely before the pool has reconnected).
    relay_a2 = procs.sb_relay("relay-A-restarted", port=port_a, db=db_a)
    assert relay_a2.url == A
    a_only = [make_event(author, 1, "A only after restart (now)"),
              make_event(author, 1, "A only after restart (30 s old)", created_at=now() - 30)]
    rust_publish(aio, A, *a_only)
    for e in a_only:
        note(e, A)
    published_at = time.monotonic()
    # Informational (the --verbose log): had the pool already reconnected to A?
    reconnected_first = any(f"nostr.relay={A} " in line and "[NostrRelay] connected" in line
                            for line in sub.proc.stderr_text().splitlines()[log_lines_at_kill:])

    # The pool reconnects, resumes (since = newest seen - 60 s) and prints the new
    # events once; the events A still has from phase 1 are not printed again.
    sub.wait_ids([hexid(e) for e in a_only], timeout=RECONNECT,
                 what="events published to A after its restart")
    waited = time.monotonic() - published_at

    # A live event on A after the reconnection.
    live_a = make_event(author, 1, "live on A after reconnect")
    rust_publish(aio, A, live_a)
    note(live_a, A)
    sub.wait_ids([hexid(live_a)])
    time.sleep(QUIET)
    sub.assert_once(published, sources)

    # A kept phase 1's events across the SIGKILL (its database).
    run, items = sb_fetch(procs, [A], [flt])
    on_a = {e["id"] for _, e in events_of(items)}
    assert on_a == {hexid(e) for e in both + a_only + [live_a]}, run.describe()
    assert sub.proc.alive(), sub.proc.describe()
    print(f"A-only events arrived {waited:.1f}s after publishing them; "
          f"pool reconnected to A before that publish: {reconnected_first}")


# ==========================================================================
# 4. Three relays, one dead
# ==========================================================================

def test_one_of_three_relays_dead(procs, aio, rng, dead_port):
    ours = procs.sb_relay("relay-ours")
    rust = start_rust_relay(aio)
    dead = f"ws://127.0.0.1:{dead_port}"
    relays = [ours.url, rust.url, dead]
    author = new_keys(rng)
    flt = {"kinds": [1], "authors": [pk(author)]}

    stored = [make_event(author, 1, f"to all three {i}", created_at=now() - 50 + i) for i in range(2)]
    run, results = sb_publish(procs, relays, stored, timeout=2, limit=15)
    assert run.returncode == 0, run.describe()
    assert_all(results, ours.url, "accepted", run)
    assert_all(results, rust.url, "accepted", run)
    for event_id, per_relay in results.items():
        assert per_relay[dead].startswith("unreachable: ") and len(per_relay[dead]) > len("unreachable: "), \
            run.describe()
    assert run.elapsed < 10, run.describe()

    # Only the dead relay given: accepted by none -> exit 1, still a line per event.
    alone = make_event(author, 1, "only to the dead relay")
    run, results = sb_publish(procs, [dead], [alone], timeout=2, limit=15)
    assert run.returncode == 1 and results[hexid(alone)][dead].startswith("unreachable: "), run.describe()

    # Stored events on one live relay only are found too.
    only_ours = make_event(author, 1, "only on ours", created_at=now() - 10)
    only_rust = make_event(author, 1, "only on rust-nostr", created_at=now() - 10)
    rust_publish(aio, ours.url, only_ours)
    rust_publish(aio, rust.url, only_rust)

    sub = procs.subscriber(relays, [flt])
    sub.wait_eose([ours.url, rust.url])
    expected = by_id(*stored, only_ours, only_rust)
    sub.wait_ids(expected)
    live_ours = make_event(author, 1, "live on ours")
    live_rust = make_event(author, 1, "live on rust-nostr")
    rust_publish(aio, ours.url, live_ours)
    rust_publish(aio, rust.url, live_rust)
    sub.wait_ids([hexid(live_ours), hexid(live_rust)])
    time.sleep(QUIET)
    sub.assert_once(by_id(*stored, only_ours, only_rust, live_ours, live_rust),
                    {hexid(only_ours): {ours.url}, hexid(only_rust): {rust.url},
                     hexid(live_ours): {ours.url}, hexid(live_rust): {rust.url}})
    assert dead not in {i["relay"] for i in sub.items()}, "a line attributed to the dead relay"


def test_close_on_eose_with_a_dead_relay_terminates(procs, rng, dead_port):
    ours = procs.sb_relay("relay-ours")
    dead = f"ws://127.0.0.1:{dead_port}"
    author = new_keys(rng)
    event = make_event(author, 1, "stored")
    sb_publish(procs, [ours.url], [event], timeout=3)
    run, items = sb_fetch(procs, [ours.url, dead], [{"authors": [pk(author)]}], limit=8)
    assert [e["id"] for _, e in events_of(items)] == [hexid(event)], run.describe()
    assert eose_relays(items) == [ours.url], run.describe()


def test_publish_many_with_a_dead_relay_is_not_n_times_timeout(procs, rng, dead_port):
    ours = procs.sb_relay("relay-ours")
    dead = f"ws://127.0.0.1:{dead_port}"
    author = new_keys(rng)
    events = [make_event(author, 1, f"batch {i}") for i in range(4)]
    run, results = sb_publish(procs, [ours.url, dead], events, timeout=2, limit=15)
    assert run.returncode == 0, run.describe()
    assert_all(results, ours.url, "accepted", run)
    for per_relay in results.values():
        assert per_relay[dead].startswith("unreachable: "), run.describe()
    # Connection refused is known at once; at worst the whole batch waits one timeout.
    assert run.elapsed < 2 * 2 + 1.5, f"4 events took {run.elapsed:.1f}s\n{run.describe()}"


# ==========================================================================
# 5. Misbehaving relays: never answers OK; sends badly signed events
# ==========================================================================

async def silent_handler(server, ws):
    async for message in ws:
        server.received.append(message)     # read, never reply


def test_relay_that_never_answers_ok(procs, aio, rng):
    silent = RawServer(aio, silent_handler)
    author = new_keys(rng)
    events = [make_event(author, 1, f"into the void {i}") for i in range(2)]
    run, results = sb_publish(procs, [silent.url], events, timeout=2, limit=15)
    assert run.elapsed < 15, run.describe()
    assert run.returncode == 1, run.describe()
    assert_all(results, silent.url, "timed out", run)
    # The events did reach the server (so "timed out" is about the missing OK).
    sent = [json.loads(m) for m in silent.received]
    assert {m[1]["id"] for m in sent if m[0] == "EVENT"} == {hexid(e) for e in events}, sent

    # Next to a relay that answers: that one's verdict is unaffected.
    ours = procs.sb_relay("relay-ours")
    run, results = sb_publish(procs, [silent.url, ours.url], events[:1], timeout=2, limit=15)
    assert results[hexid(events[0])] == {silent.url: "timed out", ours.url: "accepted"}, run.describe()
    assert run.returncode == 0 and run.elapsed < 15, run.describe()


def test_relay_sending_badly_signed_events(procs, aio, rng):
    author = new_keys(rng)
    good = as_dict(make_event(author, 1, "properly signed", created_at=now() - 5))
    base = as_dict(make_event(author, 1, "signature will be corrupted", created_at=now() - 4))
    flipped = "0" if base["sig"][10] != "0" else "1"
    bad_sig = dict(base, sig=base["sig"][:10] + flipped + base["sig"][11:])
    other = as_dict(make_event(author, 1, "content changed after signing", created_at=now() - 3))
    bad_id = dict(other, content="tampered")
    reqs = []

    async def handler(server, ws):
        async for text in ws:
            message = json.loads(text)
            server.received.append(message)
            if message[0] == "REQ":
                reqs.append(message)
                sub_id = message[1]
                for event in (bad_sig, good, bad_id):
                    await ws.send(json.dumps(["EVENT", sub_id, event]))
                await ws.send(json.dumps(["EOSE", sub_id]))

    server = RawServer(aio, handler)
    flt = {"kinds": [1], "authors": [pk(author)]}
    run, items = sb_fetch(procs, [server.url], [flt], limit=15)
    assert run.returncode == 0, run.describe()
    assert reqs and reqs[0][2:] == [flt], f"the REQ carried {reqs!r}"
    printed = [e["id"] for _, e in events_of(items)]
    assert bad_sig["id"] not in printed, f"badly signed event printed\n{run.describe()}"
    assert bad_id["id"] not in printed, f"event with a wrong id printed\n{run.describe()}"
    assert printed == [good["id"]], run.describe()
    assert eose_relays(items) == [server.url], run.describe()


# ==========================================================================
# 6. NIP-42 through the pool
# ==========================================================================

def test_nip42_through_the_pool(procs, aio, rng):
    relay = procs.sb_relay("relay-auth", auth=True)
    author, reader, stranger = new_keys(rng), new_keys(rng), new_keys(rng)

    # Publishing without credentials: the relay's auth-required refusal.
    note = make_event(author, 1, "needs auth to publish")
    run, results = sb_publish(procs, [relay.url], [note], timeout=5)
    verdict = results[hexid(note)][relay.url]
    assert verdict.startswith("rejected: auth-required:"), run.describe()
    assert run.returncode == 1, run.describe()

    # Authenticated as someone else: still not accepted.
    run, results = sb_publish(procs, [relay.url], [note], timeout=5, auth_sec=secret_hex(stranger))
    assert results[hexid(note)][relay.url].startswith("rejected: auth-required:"), run.describe()
    assert run.returncode == 1, run.describe()

    # With the author's key the pool answers the challenge and the events are accepted.
    dms = [make_event(author, 4, f"for the reader {i}", tags=[["p", pk(reader)]], created_at=now() - 20 + i)
           for i in range(2)]
    run, results = sb_publish(procs, [relay.url], [note, *dms], timeout=5, auth_sec=secret_hex(author))
    assert run.returncode == 0, run.describe()
    assert_all(results, relay.url, "accepted", run)

    p_filter = {"#p": [pk(reader)]}
    # Reading p-tagged events without auth: CLOSED auth-required, no events; exits.
    run, items = sb_fetch(procs, [relay.url], [p_filter])
    closed = [i for i in items if "closed" in i]
    assert closed and closed[0]["relay"] == relay.url, run.describe()
    assert closed[0]["closed"].startswith("auth-required:"), run.describe()
    assert not events_of(items), run.describe()

    # As someone else: not the recipient's events either.
    run, items = sb_fetch(procs, [relay.url], [p_filter], auth_sec=secret_hex(stranger))
    assert not events_of(items), run.describe()
    assert [i.get("closed", "")[:14] for i in items] == ["auth-required:"], run.describe()

    # As the reader: the stored p-tagged events, then EOSE.
    run, items = sb_fetch(procs, [relay.url], [p_filter], auth_sec=secret_hex(reader))
    assert run.returncode == 0, run.describe()
    assert sorted(e["id"] for _, e in events_of(items)) == sorted(hexid(e) for e in dms), run.describe()
    assert eose_relays(items) == [relay.url], run.describe()

    # A running authenticated subscription also gets a new p-tagged event live.
    sub = procs.subscriber([relay.url], [p_filter], auth_sec=secret_hex(reader))
    sub.wait_eose([relay.url])
    live = make_event(author, 4, "live for the reader", tags=[["p", pk(reader)]])
    run, results = sb_publish(procs, [relay.url], [live], timeout=5, auth_sec=secret_hex(author))
    assert results[hexid(live)][relay.url] == "accepted", run.describe()
    sub.wait_ids([hexid(live)])
    time.sleep(QUIET)
    sub.assert_once(by_id(*dms, live))


# ==========================================================================
# 7. wss:// (TLS)
# ==========================================================================

def openssl(*args, cwd):
    run = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True, timeout=30)
    assert run.returncode == 0, f"openssl {' '.join(map(str, args))}: {run.stderr.decode()[-1000:]}"


def make_certificates(directory: Path) -> dict:
    """A throw-away CA, a server certificate for localhost signed by it, and one signed by it
    for another name. Returns the file paths."""
    days = ["-days", "2"]
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=switchboard test CA", *days, cwd=directory)
    for name, san in (("good", "IP:127.0.0.1,DNS:localhost"), ("wrong-name", "DNS:relay.example")):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
        (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-extfile", f"{name}.ext", *days, cwd=directory)
    return {"ca": directory / "ca.pem",
            "good": (directory / "good.pem", directory / "good.key"),
            "wrong-name": (directory / "wrong-name.pem", directory / "wrong-name.key")}


class TLSProxy:
    """Terminates TLS on 127.0.0.1 (port 0) and forwards the bytes to a plain TCP port; runs on the
    aio loop."""

    def __init__(self, aio: LoopThread, certificate, target_port: int):
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*map(str, certificate))
        self.writers = set()

        async def pipe(reader, writer):
            with contextlib.suppress(Exception):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            with contextlib.suppress(Exception):
                writer.close()

        async def handle(client_reader, client_writer):
            try:
                relay_reader, relay_writer = await asyncio.open_connection("127.0.0.1", target_port)
            except OSError:
                client_writer.close()
                return
            self.writers |= {client_writer, relay_writer}
            await asyncio.gather(pipe(client_reader, relay_writer), pipe(relay_reader, client_writer))

        async def start():
            return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)

        self.server = aio.call(start())
        self.port = self.server.sockets[0].getsockname()[1]
        # A host name, not 127.0.0.1: swift-websocket always sends the URL's host as SNI, and an IP
        # address is not a valid SNI name, so wss:// needs a name (as every public relay has).
        self.url = f"wss://localhost:{self.port}"

        async def stop():
            self.server.close()
            for writer in self.writers:
                writer.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 5)
        aio.finalizers.append(stop)


def test_pool_over_wss(procs, aio, rng, tmp_path):
    certs = make_certificates(tmp_path)
    relay = procs.sb_relay("relay-behind-tls")
    tls = TLSProxy(aio, certs["good"], relay.port)
    trusted = ["--ca-file", str(certs["ca"])]
    author = new_keys(rng)
    events = [make_event(author, 1, f"over TLS {i}", created_at=now() - 10 + i) for i in range(3)]

    # Not trusted (only the system's roots): the certificate is refused, nothing reaches the relay.
    run, results = sb_publish(procs, [tls.url], events[:1], timeout=3)
    assert run.returncode == 1, run.describe()
    assert results[hexid(events[0])][tls.url].startswith("unreachable:"), run.describe()
    run, items = sb_fetch(procs, [relay.url], [{"authors": [pk(author)]}])
    assert not events_of(items), f"an event got through an untrusted TLS connection\n{run.describe()}"

    # With the test CA: publish and read back through wss://, byte-identical.
    run, results = sb_publish(procs, [tls.url], events, timeout=5, extra=trusted)
    assert run.returncode == 0, run.describe()
    assert_all(results, tls.url, "accepted", run)
    run, items = sb_fetch(procs, [tls.url], [{"authors": [pk(author)]}], extra=trusted)
    assert run.returncode == 0, run.describe()
    assert sorted(e["id"] for _, e in events_of(items)) == sorted(hexid(e) for e in events), run.describe()
    assert all(e == as_dict(ev) for (_, e), ev in zip(sorted(events_of(items), key=lambda x: x[1]["id"]),
                                                      sorted(events, key=hexid))), run.describe()
    assert eose_relays(items) == [tls.url], run.describe()

    # Live delivery and a 64 KiB+ event over TLS.
    sub = procs.subscriber([tls.url], [{"authors": [pk(author)]}], name="tls-subscriber", extra=trusted)
    sub.wait_eose([tls.url])
    big = make_event(author, 1, "x" * 70_000)
    run, results = sb_publish(procs, [tls.url], [big], timeout=5, extra=trusted)
    assert results[hexid(big)][tls.url] == "accepted", run.describe()
    sub.wait_ids([hexid(big)])
    time.sleep(QUIET)
    sub.assert_once(by_id(*events, big))

    # A certificate from the trusted CA but for another host name is refused too.
    wrong = TLSProxy(aio, certs["wrong-name"], relay.port)
    run, results = sb_publish(procs, [wrong.url], events[:1], timeout=3, extra=trusted)
    assert results[hexid(events[0])][wrong.url].startswith("unreachable:"), run.describe()
    assert "certificate" in results[hexid(events[0])][wrong.url], run.describe()
