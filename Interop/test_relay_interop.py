"""Tests the embedded relay (`switchboard relay`) against rust-nostr (nostr-sdk 0.45.1).

Run:
    SWITCHBOARD_BIN=/work/main/.build/debug/switchboard \
        /tmp/venvtest/bin/python -m pytest -q /work/main/Interop/test_relay_interop.py

Each test starts its own relay process(es) on 127.0.0.1, port 0, reads the
`ws://HOST:PORT` line it prints (10 s timeout) and stops it with SIGTERM at
teardown (then SIGKILL if it has not exited after 5 s). At teardown the relay
must still be running (a relay that died during the test fails the test) and
must exit on SIGTERM.

rust-nostr's Client is the client wherever it can do the job. What its
high-level client hides (exact OK / CLOSED / NOTICE texts, malformed JSON, the
order of stored events and EOSE) is checked over a raw WebSocket (the
`websockets` package, pinned in requirements.txt).

nostr-sdk 0.45.1 client API notes (found by introspection):
  * Client() has no signer. ClientBuilder().authenticator(a).build() gives a
    client that answers NIP-42 challenges. `a` is an Authenticator; the one the
    binding offers is SignerAuthenticator(AsyncNostrSigner). AsyncNostrSigner is
    a foreign (Python-implemented) trait, so KeysSigner below implements it over
    Keys. Rust calls that Python signer from its own threads, which needs
    nostr_sdk.uniffi_set_event_loop(<running loop>) (otherwise "no running event
    loop" and the auth times out); `run()` below does that.
  * await client.add_relay(RelayUrl.parse(url)); await client.connect(timedelta)
  * await client.send_event(event, ok_timeout=timedelta) -> SendEventOutput with
    .id (EventId), .success (list of RelayUrl), .failed ({RelayUrl: relay message})
  * await client.fetch_events(ReqTarget.auto([Filter...]), timedelta) -> list[Event]
  * await client.subscribe(ReqTarget.auto([...])) -> SubscribeOutput(.id, .success, .failed)
  * client.notifications() -> stream; await stream.next() -> ClientNotification:
    NEW_EVENT(relay_url, subscription_id, event) or MESSAGE(relay_url, message)
    where message.as_enum() is a RelayMessageEnum (END_OF_STORED_EVENTS, OK, ...).
  * await client.shutdown()
  * Python `Duration` is datetime.timedelta.
  * There is no EventBuilder.auth in 0.45.1: the NIP-42 event is built by hand as
    EventBuilder(Kind(22242), "").tags([relay, challenge]).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
import urllib.request
from datetime import timedelta

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import nostr_sdk
from nostr_sdk import (
    AsyncNostrSigner,
    ClientBuilder,
    Coordinate,
    Event,
    EventBuilder,
    Filter,
    Keys,
    Kind,
    RelayInformationDocument,
    RelayUrl,
    ReqTarget,
    SecretKey,
    SignerAuthenticator,
    Tag,
    Timestamp,
)

from conftest import SEED, terminate

START_TIMEOUT = 10.0   # relay must print its URL within this
STOP_TIMEOUT = 5.0     # relay must exit within this after SIGTERM
STEP = 5.0             # one expected message / one client round trip
QUIET = 0.4            # how long "nothing more arrives" is watched
TEST_TIMEOUT = 40.0    # whole async body of one test


# --------------------------------------------------------------------------
# The relay process
# --------------------------------------------------------------------------

class RelayProcess:
    def __init__(self, args, stderr_path):
        self.args = args
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr)
        self.stdout_lines = []
        self._first = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._first.wait(START_TIMEOUT):
            self.stop()
            pytest.fail(f"relay did not print its URL within {START_TIMEOUT}s\n{self.describe()}",
                        pytrace=False)
        self.url = self.stdout_lines[0].strip() if self.stdout_lines else ""
        if not (self.url.startswith("ws://127.0.0.1:") and self.url.rsplit(":", 1)[1].isdigit()):
            self.stop()
            pytest.fail(f"first stdout line is not ws://127.0.0.1:PORT: {self.url!r}\n{self.describe()}",
                        pytrace=False)
        self.http_url = "http://" + self.url[len("ws://"):]

    def _drain(self):
        try:
            for raw in iter(self.proc.stdout.readline, b""):
                self.stdout_lines.append(raw.decode("utf-8", "replace"))
                self._first.set()
        finally:
            self._first.set()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, n=3000) -> str:
        try:
            self._stderr.flush()
            with open(self.stderr_path, "rb") as fh:
                data = fh.read()
        except OSError:
            return "?"
        return data[-n:].decode("utf-8", "replace")

    def describe(self) -> str:
        return (f"[seed {SEED}] {' '.join(self.args)}\n  returncode: {self.proc.poll()}\n"
                f"  stdout: {self.stdout_lines[:5]!r}\n  stderr tail:\n{self.stderr_tail()}")

    stopped_by_test = False

    def restart_check_stop(self):
        """Stops the relay in the middle of a test; fails unless it was running and exited on SIGTERM."""
        was_alive, exited = self.stop()
        self.stopped_by_test = True
        assert was_alive and exited, f"relay did not stop cleanly:\n{self.describe()}"

    def stop(self):
        """SIGTERM, wait, SIGKILL. Returns (was_alive_before, exited_on_sigterm)."""
        result = terminate(self.proc, STOP_TIMEOUT)
        self._stderr.close()
        return result


@pytest.fixture
def start_relay(switchboard, tmp_path):
    """Factory: start_relay(*extra_args) -> RelayProcess. All are stopped at teardown."""
    started = []

    def start(*extra):
        args = [switchboard.path, "relay", "--host", "127.0.0.1", "--port", "0", *extra]
        relay = RelayProcess(args, tmp_path / f"relay{len(started)}.stderr")
        started.append(relay)
        return relay

    yield start
    problems = []
    for relay in started:
        if relay.stopped_by_test:
            continue
        was_alive, exited = relay.stop()
        if not was_alive:
            problems.append(f"relay died during the test:\n{relay.describe()}")
        elif not exited:
            problems.append(f"relay did not exit within {STOP_TIMEOUT}s of SIGTERM:\n{relay.describe()}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# --------------------------------------------------------------------------
# Async plumbing
# --------------------------------------------------------------------------

def run(body, timeout=TEST_TIMEOUT):
    """Runs an async test body with a hard timeout. Registers the loop with the
    binding so Rust can call back into Python (the NIP-42 signer)."""
    async def main():
        nostr_sdk.uniffi_set_event_loop(asyncio.get_running_loop())
        try:
            return await asyncio.wait_for(body(), timeout)
        finally:
            nostr_sdk.uniffi_set_event_loop(None)
    return asyncio.run(main())


class KeysSigner(AsyncNostrSigner):
    """A Python implementation of rust-nostr's AsyncNostrSigner trait over Keys."""

    def __init__(self, keys: Keys):
        self.keys = keys

    async def get_public_key_async(self):
        return self.keys.public_key()

    async def sign_event_async(self, unsigned_event):
        return self.keys.sign_event(unsigned_event)

    async def nip04_encrypt_async(self, public_key, content):
        raise NotImplementedError

    async def nip04_decrypt_async(self, public_key, encrypted_content):
        raise NotImplementedError

    async def nip44_encrypt_async(self, public_key, content):
        raise NotImplementedError

    async def nip44_decrypt_async(self, public_key, payload):
        raise NotImplementedError


@contextlib.asynccontextmanager
async def nostr_client(url: str, auth_keys: Keys | None = None):
    builder = ClientBuilder()
    if auth_keys is not None:
        builder = builder.authenticator(SignerAuthenticator(KeysSigner(auth_keys)))
    client = builder.build()
    await client.add_relay(RelayUrl.parse(url))
    await client.connect(timedelta(seconds=STEP))
    try:
        yield client
    finally:
        await client.shutdown()


async def publish(client, event: Event):
    return await client.send_event(event, ok_timeout=timedelta(seconds=STEP))


def assert_published(out, event: Event, context=""):
    assert not out.failed and len(out.success) == 1, (
        f"[seed {SEED}] relay refused {event.as_json()}: failed={out.failed!r} {context}")
    assert out.id.to_hex() == event.id().to_hex()


def assert_refused(out, event: Event, prefix: str):
    assert not out.success and len(out.failed) == 1, (
        f"[seed {SEED}] expected the relay to refuse {event.as_json()} with {prefix!r}, "
        f"got success={out.success!r} failed={out.failed!r}")
    (message,) = out.failed.values()
    assert message.startswith(prefix), (
        f"[seed {SEED}] refusal of {event.as_json()} should start with {prefix!r}: {message!r}")
    return message


async def fetch(url: str, *filters, auth_keys=None):
    """Fetches with a fresh client (nothing cached from publishing)."""
    async with nostr_client(url, auth_keys) as client:
        return await client.fetch_events(ReqTarget.auto(list(filters)), timedelta(seconds=STEP))


async def wait_eose(stream, sub_id: str):
    while True:
        note = await asyncio.wait_for(stream.next(), STEP)
        assert note is not None, "notification stream ended"
        if note.is_message():
            msg = note.message.as_enum()
            if msg.is_end_of_stored_events() and msg.subscription_id == sub_id:
                return
            assert not (msg.is_closed() and msg.subscription_id == sub_id), (
                f"subscription {sub_id} CLOSED: {msg.message!r}")


async def next_new_event(stream, sub_id: str, timeout=STEP) -> Event:
    deadline = time.monotonic() + timeout
    while True:
        note = await asyncio.wait_for(stream.next(), max(0.01, deadline - time.monotonic()))
        assert note is not None, "notification stream ended"
        if note.is_new_event() and note.subscription_id == sub_id:
            return note.event


async def no_new_event(stream, sub_id: str, duration=QUIET):
    deadline = time.monotonic() + duration
    while (left := deadline - time.monotonic()) > 0:
        try:
            note = await asyncio.wait_for(stream.next(), left)
        except asyncio.TimeoutError:
            return
        if note is not None and note.is_new_event() and note.subscription_id == sub_id:
            pytest.fail(f"[seed {SEED}] unexpected live event on {sub_id}: {note.event.as_json()}")


# --------------------------------------------------------------------------
# Raw WebSocket client
# --------------------------------------------------------------------------

class Raw:
    """A raw NIP-01 connection. Received messages go to an inbox; `take` pops the
    first one matching a predicate (keeping the order of the rest)."""

    def __init__(self, ws):
        self.ws = ws
        self.inbox = []
        self.challenge = None

    @classmethod
    async def open(cls, url: str) -> "Raw":
        ws = await ws_connect(url, open_timeout=STEP, close_timeout=2, max_size=None)
        raw = cls(ws)
        first = await raw.take(lambda m: True, "the AUTH challenge sent on connect")
        assert first[0] == "AUTH" and len(first) == 2 and isinstance(first[1], str) and first[1], (
            f"first message should be [\"AUTH\", <challenge>], got {first!r}")
        raw.challenge = first[1]
        return raw

    async def close(self):
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def send(self, message):
        await self.ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))

    async def _read(self, timeout):
        text = await asyncio.wait_for(self.ws.recv(), timeout)
        message = json.loads(text)
        assert isinstance(message, list) and message and isinstance(message[0], str), (
            f"relay sent a non-NIP-01 message: {text[:300]!r}")
        return message

    async def take(self, pred, what: str, timeout=STEP):
        for i, message in enumerate(self.inbox):
            if pred(message):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                message = await self._read(left)
            except asyncio.TimeoutError:
                pytest.fail(f"[seed {SEED}] no {what} within {timeout}s; unconsumed messages: "
                            f"{json.dumps(self.inbox)[:1500]}")
            if pred(message):
                return message
            self.inbox.append(message)

    async def drain(self, duration=QUIET):
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.inbox.append(await self._read(left))
            except asyncio.TimeoutError:
                break
        return self.inbox

    async def ok(self, event_id: str):
        message = await self.take(lambda m: m[0] == "OK" and len(m) > 1 and m[1] == event_id,
                                  f"OK for {event_id}")
        assert len(message) == 4 and isinstance(message[2], bool) and isinstance(message[3], str), message
        return message

    async def publish(self, event: Event):
        await self.send(["EVENT", json.loads(event.as_json())])
        return await self.ok(event.id().to_hex())

    async def notice(self):
        return await self.take(lambda m: m[0] == "NOTICE", "NOTICE")

    async def stored(self, sub_id: str, *filters):
        """REQ; returns the EVENTs sent before EOSE (in order). Fails on CLOSED."""
        await self.send(["REQ", sub_id, *filters])
        events = []
        while True:
            message = await self.take(
                lambda m: m[0] in ("EVENT", "EOSE", "CLOSED") and len(m) > 1 and m[1] == sub_id,
                f"EVENT/EOSE for {sub_id}")
            if message[0] == "EOSE":
                return events
            assert message[0] == "EVENT", f"REQ {filters!r} was answered with {message!r}"
            assert len(message) == 3 and isinstance(message[2], dict), message
            events.append(message[2])

    async def closed(self, sub_id: str):
        message = await self.take(
            lambda m: m[0] in ("EVENT", "EOSE", "CLOSED") and len(m) > 1 and m[1] == sub_id,
            f"CLOSED for {sub_id}")
        assert message[0] == "CLOSED" and len(message) == 3, f"expected CLOSED for {sub_id}, got {message!r}"
        return message[2]

    async def live(self, sub_id: str, timeout=STEP):
        message = await self.take(lambda m: m[0] == "EVENT" and m[1] == sub_id,
                                  f"live EVENT on {sub_id}", timeout)
        return message[2]

    async def assert_no_event(self, sub_id: str, duration=QUIET):
        await self.drain(duration)
        stray = [m for m in self.inbox if m[0] == "EVENT" and m[1] == sub_id]
        assert not stray, f"[seed {SEED}] unexpected EVENTs on {sub_id}: {json.dumps(stray)[:1500]}"


@contextlib.asynccontextmanager
async def raw_conn(url: str):
    raw = await Raw.open(url)
    try:
        yield raw
    finally:
        await raw.close()


def http_get(url: str, headers: dict, method="GET"):
    request = urllib.request.Request(url, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=STEP) as response:
        return response.status, response.headers, response.read()


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------

def new_keys(rng) -> Keys:
    return Keys(SecretKey.from_bytes(rng.randbytes(32)))


def now() -> int:
    return int(time.time())


def make_event(keys: Keys, kind: int, content: str = "", tags=(), created_at: int | None = None) -> Event:
    builder = EventBuilder(Kind(kind), content).tags([Tag.parse(list(t)) for t in tags])
    builder = builder.custom_created_at(Timestamp.from_secs(now() if created_at is None else created_at))
    return keys.sign_event(builder.finalize_unsigned(keys.public_key()))


def as_dict(event: Event) -> dict:
    return json.loads(event.as_json())


def hexid(event: Event) -> str:
    return event.id().to_hex()


def pk(keys: Keys) -> str:
    return keys.public_key().to_hex()


def ids(events) -> list:
    return [e["id"] if isinstance(e, dict) else hexid(e) for e in events]


def newest_first(events) -> list:
    """NIP-01 order: created_at descending, then id ascending."""
    return sorted(events, key=lambda e: (-e.created_at().as_secs(), hexid(e)))


# --------------------------------------------------------------------------
# 1. Publish, fetch, live delivery
# --------------------------------------------------------------------------

def test_publish_fetch_and_live_delivery(start_relay, rng):
    relay = start_relay()
    author = new_keys(rng)
    event = make_event(author, 1, "héllo 🦄 \"quoted\" \\ \n line",
                       tags=[["t", "interop"], ["p", pk(new_keys(rng))], ["x", "", "extra"]],
                       created_at=now() - 5)

    async def body():
        async with nostr_client(relay.url) as listener, nostr_client(relay.url) as publisher:
            stream = listener.notifications()
            sub = await listener.subscribe(
                ReqTarget.auto([Filter().author(author.public_key()).kind(Kind(1))]))
            assert not sub.failed, sub.failed
            await wait_eose(stream, sub.id)

            out = await publish(publisher, event)
            assert_published(out, event)

            live = await next_new_event(stream, sub.id)
            assert as_dict(live) == as_dict(event)
            assert live.verify()

        fetched = await fetch(relay.url, Filter().id(event.id()))
        assert len(fetched) == 1, [e.as_json() for e in fetched]
        assert as_dict(fetched[0]) == as_dict(event)
        assert fetched[0].signature() == event.signature() and fetched[0].verify()

        async with raw_conn(relay.url) as raw:
            # Byte-level: the stored event comes back field for field.
            got = await raw.stored("one", {"ids": [hexid(event)]})
            assert got == [as_dict(event)]
            # A second copy of a stored event: NIP-01 says OK true, "duplicate:".
            ok = await raw.publish(event)
            assert ok[2] is True and ok[3].startswith("duplicate:"), ok
            # Still exactly one stored copy.
            assert ids(await raw.stored("two", {"authors": [pk(author)]})) == [hexid(event)]
            # A fresh accepted event gets OK true.
            second = make_event(author, 1, "second")
            ok = await raw.publish(second)
            assert ok[2] is True, ok

    run(body)


# --------------------------------------------------------------------------
# 2. REQ: stored (newest first, limit), EOSE, live; several filters; CLOSE
# --------------------------------------------------------------------------

def test_req_stored_then_eose_then_live(start_relay, rng):
    relay = start_relay()
    author, other, tied = new_keys(rng), new_keys(rng), new_keys(rng)
    base = now() - 1000
    notes = [make_event(author, 1, f"note {i}", created_at=base + 60 * i) for i in range(6)]
    reactions = [make_event(author, 7, "+", tags=[["e", hexid(notes[0])]], created_at=base + 30 + 60 * i)
                 for i in range(2)]
    same_time = [make_event(tied, 1, f"tie {i}", created_at=base) for i in range(4)]

    async def body():
        async with nostr_client(relay.url) as publisher:
            stored = notes + reactions + same_time
            for event in rng.sample(stored, len(stored)):   # publish in random order
                assert_published(await publish(publisher, event), event)

            async with raw_conn(relay.url) as raw:
                expected4 = ids(newest_first(notes)[:4])
                got = await raw.stored("lim", {"authors": [pk(author)], "kinds": [1], "limit": 4})
                assert ids(got) == expected4, "limit 4, newest first"
                # Nothing else arrived for "lim" between the stored events and EOSE.
                await raw.assert_no_event("lim", 0.1)

                # Equal created_at: lowest id first (NIP-01).
                got = await raw.stored("tie", {"authors": [pk(tied)], "limit": 2})
                assert ids(got) == sorted(ids(same_time))[:2]

                # Several filters: union, each with its own limit.
                got = await raw.stored("multi", {"authors": [pk(author)], "kinds": [1], "limit": 2},
                                       {"authors": [pk(author)], "kinds": [7]})
                want = set(ids(newest_first(notes)[:2]) + ids(reactions))
                assert len(got) == len(want) and set(ids(got)) == want, ids(got)

                # No matching stored events: just EOSE.
                assert await raw.stored("none", {"authors": [pk(other)]}) == []

                # Live: a new kind-1 note goes to "lim" and "multi" (limit is for stored only).
                fresh = make_event(author, 1, "live note")
                assert_published(await publish(publisher, fresh), fresh)
                assert await raw.live("lim") == as_dict(fresh)
                assert await raw.live("multi") == as_dict(fresh)
                # Another author's note goes to "none" (its author filter) only; a
                # kind-7 to "multi" only.
                foreign = make_event(other, 1, "not for lim or multi")
                assert_published(await publish(publisher, foreign), foreign)
                reaction = make_event(author, 7, "🤙")
                assert_published(await publish(publisher, reaction), reaction)
                assert await raw.live("none") == as_dict(foreign)
                assert await raw.live("multi") == as_dict(reaction)
                await raw.assert_no_event("lim")
                await raw.assert_no_event("none")
                assert not [m for m in raw.inbox if m[0] == "EVENT" and m[2]["id"] == hexid(foreign)]

                # CLOSE "lim": later notes reach "multi" only.
                await raw.send(["CLOSE", "lim"])
                # CLOSE has no reply; a REQ answered on the same (ordered) connection proves the relay has
                # processed it before the next note is published from another connection.
                assert await raw.stored("barrier", {"ids": ["0" * 64]}) == []
                await raw.send(["CLOSE", "barrier"])
                after_close = make_event(author, 1, "after close")
                assert_published(await publish(publisher, after_close), after_close)
                assert await raw.live("multi") == as_dict(after_close)
                await raw.assert_no_event("lim")

                # Re-using a subscription id replaces it.
                got = await raw.stored("multi", {"kinds": [7], "authors": [pk(author)], "limit": 1})
                assert ids(got) == [hexid(reaction)]
                late = make_event(author, 1, "old filter no longer applies")
                assert_published(await publish(publisher, late), late)
                await raw.assert_no_event("multi")

        # rust-nostr's fetch with a limit gets the newest ones.
        fetched = await fetch(relay.url, Filter().author(author.public_key()).kind(Kind(1)).limit(3))
        all_notes = notes + [fresh, after_close, late]
        assert set(ids(fetched)) == set(ids(newest_first(all_notes)[:3]))

    run(body)


def test_subscription_limit_gives_closed_restricted(start_relay):
    relay = start_relay()
    _, _, info = http_get(relay.http_url + "/", {"Accept": "application/nostr+json"})
    advertised = json.loads(info).get("limitation", {}).get("max_subscriptions")

    async def body():
        async with raw_conn(relay.url) as raw:
            limit = None
            for i in range(200):
                await raw.send(["REQ", f"s{i}", {"kinds": [1], "limit": 1}])
                message = await raw.take(
                    lambda m: m[0] in ("EOSE", "CLOSED") and m[1] == f"s{i}", f"EOSE/CLOSED for s{i}")
                if message[0] == "CLOSED":
                    assert message[2].startswith("restricted:"), message
                    limit = i
                    break
            assert limit is not None, "200 open subscriptions on one connection were all accepted"
            if advertised is not None:
                assert limit == advertised, f"NIP-11 says max_subscriptions {advertised}, CLOSED at {limit + 1}"
            # Re-using an open id does not count as a new subscription.
            assert await raw.stored("s1", {"kinds": [1], "limit": 1}) == []
            # Closing one frees a slot.
            await raw.send(["CLOSE", "s0"])
            assert await raw.stored("again", {"kinds": [1], "limit": 1}) == []

    run(body)


# --------------------------------------------------------------------------
# 3. Replaceable and addressable events
# --------------------------------------------------------------------------

def storage_args(storage: str, tmp_path) -> list:
    return ["--db", str(tmp_path / "events.sqlite")] if storage == "sqlite" else []


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_replaceable_and_addressable(start_relay, rng, storage, tmp_path):
    relay = start_relay(*storage_args(storage, tmp_path))
    alice, bob, carol = new_keys(rng), new_keys(rng), new_keys(rng)
    t = now() - 500

    async def stored_ids(*filters):
        return set(ids(await fetch(relay.url, *filters)))

    async def body():
        async with nostr_client(relay.url) as client:
            # kind 0: the newer one wins, whatever the publishing order.
            meta_old = make_event(alice, 0, '{"name":"old"}', created_at=t)
            meta_new = make_event(alice, 0, '{"name":"new"}', created_at=t + 100)
            assert_published(await publish(client, meta_old), meta_old)
            assert await stored_ids(Filter().author(alice.public_key()).kind(Kind(0))) == {hexid(meta_old)}
            assert_published(await publish(client, meta_new), meta_new)
            meta_filter = Filter().author(alice.public_key()).kind(Kind(0))
            assert await stored_ids(meta_filter) == {hexid(meta_new)}
            # Re-publishing the older one, or an even older one, does not replace it.
            await publish(client, meta_old)
            meta_older = make_event(alice, 0, '{"name":"older"}', created_at=t - 100)
            await publish(client, meta_older)
            assert await stored_ids(meta_filter) == {hexid(meta_new)}

            # Other authors have their own kind 0; kinds 3 and 10002 replace too.
            bob_meta = make_event(bob, 0, '{"name":"bob"}', created_at=t + 200)
            assert_published(await publish(client, bob_meta), bob_meta)
            follows = [make_event(alice, 3, "", tags=[["p", pk(bob)]], created_at=t + i) for i in (10, 20)]
            relays = [make_event(alice, 10002, "", tags=[["r", f"wss://r{i}.example"]], created_at=t + i)
                      for i in (30, 40)]
            for event in (follows[1], follows[0], relays[0], relays[1]):
                assert_published(await publish(client, event), event)
            got = await stored_ids(Filter().authors([alice.public_key(), bob.public_key()])
                                   .kinds([Kind(0), Kind(3), Kind(10002)]))
            assert got == {hexid(meta_new), hexid(bob_meta), hexid(follows[1]), hexid(relays[1])}

            # Same created_at: the lowest id is kept (NIP-01).
            tie = sorted([make_event(carol, 0, f'{{"n":{i}}}', created_at=t) for i in range(3)], key=hexid)
            for event in (tie[2], tie[0], tie[1]):
                await publish(client, event)
            assert await stored_ids(Filter().author(carol.public_key()).kind(Kind(0))) == {hexid(tie[0])}

            # Addressable: one per (kind, pubkey, d tag).
            art_a1 = make_event(alice, 30023, "a v1", tags=[["d", "a"]], created_at=t)
            art_a2 = make_event(alice, 30023, "a v2", tags=[["d", "a"]], created_at=t + 50)
            art_b = make_event(alice, 30023, "b", tags=[["d", "b"], ["title", "B"]], created_at=t + 10)
            other_kind = make_event(alice, 30024, "draft a", tags=[["d", "a"]], created_at=t)
            bob_a = make_event(bob, 30023, "bob a", tags=[["d", "a"]], created_at=t)
            for event in (art_a1, art_b, art_a2, other_kind, bob_a):
                assert_published(await publish(client, event), event)
            await publish(client, art_a1)   # older version again: ignored
            got = await stored_ids(Filter().author(alice.public_key()).kind(Kind(30023)))
            assert got == {hexid(art_a2), hexid(art_b)}
            got = await stored_ids(Filter().author(alice.public_key()).kind(Kind(30023)).identifier("a"))
            assert got == {hexid(art_a2)}
            # rust-nostr's Filter.coordinate is a `#a` filter: events that reference it.
            coordinate = f"30023:{pk(alice)}:a"
            comment = make_event(bob, 1, "nice article", tags=[["a", coordinate]], created_at=t + 60)
            assert_published(await publish(client, comment), comment)
            got = await stored_ids(Filter().coordinate(Coordinate.parse(coordinate)))
            assert got == {hexid(comment)}
            got = await stored_ids(Filter().identifier("a"))
            assert got == {hexid(art_a2), hexid(other_kind), hexid(bob_a)}

        # The replaced versions are really gone, also when asked for by id.
        async with raw_conn(relay.url) as raw:
            gone = [meta_old, meta_older, art_a1] + follows[:1] + relays[:1] + tie[1:]
            assert await raw.stored("gone", {"ids": ids(gone)}) == []

    run(body)


# --------------------------------------------------------------------------
# 4. Ephemeral events
# --------------------------------------------------------------------------

def test_ephemeral_delivered_live_never_stored(start_relay, rng):
    relay = start_relay()
    author = new_keys(rng)

    async def body():
        eph = make_event(author, 20001, "now or never", tags=[["t", "eph"]])
        async with nostr_client(relay.url) as listener, nostr_client(relay.url) as publisher:
            stream = listener.notifications()
            sub = await listener.subscribe(
                ReqTarget.auto([Filter().author(author.public_key()).kind(Kind(20001))]))
            await wait_eose(stream, sub.id)
            assert_published(await publish(publisher, eph), eph)
            live = await next_new_event(stream, sub.id)
            assert as_dict(live) == as_dict(eph)

            async with raw_conn(relay.url) as raw:
                await raw.send(["REQ", "eph", {"kinds": [29999]}])
                await raw.take(lambda m: m[:2] == ["EOSE", "eph"], "EOSE")
                eph2 = make_event(author, 29999, "upper end of the range")
                ok = await raw.publish(eph2)
                assert ok[2] is True, ok
                assert await raw.live("eph") == as_dict(eph2)

        assert await fetch(relay.url, Filter().author(author.public_key())) == []
        async with raw_conn(relay.url) as raw:
            assert await raw.stored("ids", {"ids": [hexid(eph), hexid(eph2)]}) == []
            assert await raw.stored("kinds", {"kinds": [20001, 29999]}) == []

    run(body)


# --------------------------------------------------------------------------
# 5. NIP-40 expiration and NIP-09 deletion
# --------------------------------------------------------------------------

def test_expiration_nip40(start_relay, rng):
    relay = start_relay()
    author = new_keys(rng)

    async def body():
        expired = make_event(author, 1, "already expired", tags=[["expiration", str(now() - 10)]])
        soon = now() + 3
        expiring = make_event(author, 1, "expires soon", tags=[["expiration", str(soon)]])
        lasting = make_event(author, 1, "expires later", tags=[["expiration", str(now() + 3600)]])
        async with nostr_client(relay.url) as client:
            assert_refused(await publish(client, expired), expired, "invalid:")
            assert_published(await publish(client, expiring), expiring)
            assert_published(await publish(client, lasting), lasting)
        async with raw_conn(relay.url) as raw:
            ok = await raw.publish(expired)
            assert ok[2] is False and ok[3].startswith("invalid:"), ok
            got = await raw.stored("before", {"authors": [pk(author)]})
            assert set(ids(got)) == {hexid(expiring), hexid(lasting)}
        # Wait until the expiration has passed (whole seconds), then it is not served.
        await asyncio.sleep(max(0.0, soon + 1.2 - time.time()))
        got = await fetch(relay.url, Filter().author(author.public_key()))
        assert ids(got) == [hexid(lasting)]
        async with raw_conn(relay.url) as raw:
            assert await raw.stored("ids", {"ids": [hexid(expiring), hexid(expired)]}) == []

    run(body)


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_deletion_nip09(start_relay, rng, storage, tmp_path):
    relay = start_relay(*storage_args(storage, tmp_path))
    alice, bob = new_keys(rng), new_keys(rng)
    t = now() - 300

    async def body():
        n1 = make_event(alice, 1, "delete me", created_at=t)
        n2 = make_event(alice, 1, "keep me", created_at=t + 1)
        n3 = make_event(bob, 1, "bob's, alice cannot delete it", created_at=t + 2)
        art = make_event(alice, 30023, "article v1", tags=[["d", "x"]], created_at=t + 3)
        async with nostr_client(relay.url) as client:
            for event in (n1, n2, n3, art):
                assert_published(await publish(client, event), event)
            deletion = make_event(alice, 5, "spam", created_at=t + 10, tags=[
                ["e", hexid(n1)], ["e", hexid(n3)], ["a", f"30023:{pk(alice)}:x"], ["k", "1"], ["k", "30023"]])
            assert_published(await publish(client, deletion), deletion)
            # bob cannot delete alice's note.
            bob_deletion = make_event(bob, 5, "", tags=[["e", hexid(n2)]], created_at=t + 11)
            await publish(client, bob_deletion)

            got = set(ids(await fetch(relay.url, Filter().authors([alice.public_key(), bob.public_key()])
                                      .kinds([Kind(1), Kind(30023)]))))
            assert got == {hexid(n2), hexid(n3)}, "n1 and the article are deleted; n2 and bob's n3 stay"
            # The deletion request itself is kept and served (NIP-09: relays SHOULD keep it).
            got = ids(await fetch(relay.url, Filter().author(alice.public_key()).kind(Kind(5))))
            assert got == [hexid(deletion)]

            # An `a` deletion covers versions up to its created_at; a newer version lives.
            art_v2 = make_event(alice, 30023, "article v2", tags=[["d", "x"]], created_at=t + 20)
            assert_published(await publish(client, art_v2), art_v2)
            got = ids(await fetch(relay.url, Filter().author(alice.public_key()).kind(Kind(30023))))
            assert got == [hexid(art_v2)]

        async with raw_conn(relay.url) as raw:
            assert await raw.stored("gone", {"ids": [hexid(n1), hexid(art)]}) == []
            # Publishing the deleted event again must not bring it back.
            await raw.publish(n1)
            assert await raw.stored("still", {"ids": [hexid(n1)]}) == []

    run(body)


def test_sqlite_store_survives_restart(start_relay, rng, tmp_path):
    """--db: what rust-nostr published is served by the next relay process on the same file, deletions and
    replacements included."""
    db = ["--db", str(tmp_path / "events.sqlite")]
    alice = new_keys(rng)
    t = now() - 100
    notes = [make_event(alice, 1, f"note {i}", tags=[["t", "persist"]], created_at=t + i) for i in range(20)]
    profile = make_event(alice, 0, '{"name":"v2"}', created_at=t + 50)
    old_profile = make_event(alice, 0, '{"name":"v1"}', created_at=t + 40)
    deletion = make_event(alice, 5, "", tags=[["e", hexid(notes[0])]], created_at=t + 60)

    first = start_relay(*db)

    async def publish_all():
        async with nostr_client(first.url) as client:
            for event in notes + [old_profile, profile, deletion]:
                assert_published(await publish(client, event), event)

    run(publish_all)
    first.restart_check_stop()
    second = start_relay(*db)

    async def check():
        got = ids(await fetch(second.url, Filter().hashtag("persist")))
        assert got == ids(newest_first(notes[1:])), "the deleted note stays deleted, the rest come back newest first"
        got = ids(await fetch(second.url, Filter().author(alice.public_key()).kind(Kind(0))))
        assert got == [hexid(profile)]
        async with raw_conn(second.url) as raw:
            await raw.publish(notes[0])
            assert await raw.stored("still-deleted", {"ids": [hexid(notes[0])]}) == []

    run(check)


def test_unopenable_db_is_a_clear_error(switchboard, tmp_path):
    proc = subprocess.run([switchboard.path, "relay", "--port", "0", "--db", str(tmp_path / "no" / "such" / "dir.sqlite")],
                          capture_output=True, timeout=START_TIMEOUT)
    assert proc.returncode != 0
    assert b"cannot open the database" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------
# 6. NIP-11 relay information document
# --------------------------------------------------------------------------

def test_nip11_document_and_cors(start_relay):
    plain = start_relay("--max-message-length", "70000")
    auth = start_relay("--auth-required")

    status, headers, body = http_get(plain.http_url + "/", {"Accept": "application/nostr+json"})
    assert status == 200
    assert headers.get("Access-Control-Allow-Origin") == "*", dict(headers)
    assert "application/nostr+json" in (headers.get("Content-Type") or ""), dict(headers)
    document = json.loads(body)
    assert isinstance(document, dict), document
    nips = document.get("supported_nips")
    assert isinstance(nips, list) and all(type(n) is int for n in nips), nips
    assert {1, 11, 42} <= set(nips), nips
    limitation = document.get("limitation")
    assert isinstance(limitation, dict), document
    assert limitation.get("max_message_length") == 70000, limitation
    assert limitation.get("auth_required") in (False, None), limitation
    for key in ("name", "software", "version", "description"):
        assert key not in document or isinstance(document[key], str), (key, document)

    # rust-nostr parses the same document and reads the same values.
    parsed = RelayInformationDocument.from_json(body.decode())
    assert set(parsed.supported_nips()) == set(nips)
    assert parsed.limitation().max_message_length == 70000
    assert parsed.name() == document.get("name")

    # --auth-required shows up in the document.
    status, headers, body = http_get(auth.http_url + "/", {"Accept": "application/nostr+json"})
    assert status == 200 and headers.get("Access-Control-Allow-Origin") == "*"
    assert json.loads(body)["limitation"].get("auth_required") is True, body
    assert RelayInformationDocument.from_json(body.decode()).limitation().auth_required is True

    # CORS preflight (NIP-11: Allow-Origin, Allow-Headers, Allow-Methods).
    status, headers, _ = http_get(plain.http_url + "/", {
        "Origin": "https://client.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "accept"}, method="OPTIONS")
    assert 200 <= status < 300, status
    assert headers.get("Access-Control-Allow-Origin") == "*", dict(headers)
    assert headers.get("Access-Control-Allow-Headers"), dict(headers)
    assert "GET" in (headers.get("Access-Control-Allow-Methods") or ""), dict(headers)

    # Without the Accept header it is not the NIP-11 JSON document.
    status, headers, body = http_get(plain.http_url + "/", {})
    assert "application/nostr+json" not in (headers.get("Content-Type") or ""), dict(headers)


# --------------------------------------------------------------------------
# 7. NIP-42 authentication
# --------------------------------------------------------------------------

def auth_event(keys: Keys, relay_url: str, challenge: str, kind=22242, created_at=None) -> Event:
    return make_event(keys, kind, "", tags=[["relay", relay_url], ["challenge", challenge]],
                      created_at=created_at)


async def authenticate(raw: Raw, keys: Keys, relay_url: str):
    event = auth_event(keys, relay_url, raw.challenge)
    await raw.send(["AUTH", as_dict(event)])
    ok = await raw.ok(hexid(event))
    assert ok[2] is True, f"AUTH as {pk(keys)} refused: {ok!r}"


def test_nip42_publish_requires_auth(start_relay, rng):
    relay = start_relay("--auth-required")
    alice, bob, carol = new_keys(rng), new_keys(rng), new_keys(rng)

    async def body():
        # rust-nostr without an authenticator: refused with auth-required.
        note = make_event(alice, 1, "needs auth")
        async with nostr_client(relay.url) as client:
            assert_refused(await publish(client, note), note, "auth-required:")
        # rust-nostr with an authenticator: it answers the challenge and publishes.
        async with nostr_client(relay.url, auth_keys=alice) as client:
            assert_published(await publish(client, note), note)
            # Authenticated as alice is not authenticated as bob. (rust-nostr, told
            # auth-required, waits for a new AUTH challenge, which this relay only sends on
            # connect, so its own failure text is "timeout", not the relay's message.)
            bobs = make_event(bob, 1, "bob via alice's connection")
            out = await client.send_event(bobs, ok_timeout=timedelta(seconds=STEP),
                                          authentication_timeout=timedelta(seconds=1))
            assert not out.success and len(out.failed) == 1, (out.success, out.failed)
        got = await fetch(relay.url, Filter().ids([note.id(), bobs.id()]))
        assert ids(got) == [hexid(note)], "alice's note is stored, bob's is not; reading needs no auth"

        # By hand over a raw connection, the AUTH event signed by rust-nostr.
        async with raw_conn(relay.url) as raw:
            bob_note = make_event(bob, 1, "bob, by hand")
            ok = await raw.publish(bob_note)
            assert ok[2] is False and ok[3].startswith("auth-required:"), ok

            bad_auths = {
                "wrong challenge": auth_event(bob, relay.url, raw.challenge + "x"),
                "wrong relay": auth_event(bob, "ws://127.0.0.1:1", raw.challenge),
                "wrong kind": auth_event(bob, relay.url, raw.challenge, kind=1),
                "stale created_at": auth_event(bob, relay.url, raw.challenge, created_at=now() - 86400),
            }
            for what, event in bad_auths.items():
                await raw.send(["AUTH", as_dict(event)])
                ok = await raw.ok(hexid(event))
                assert ok[2] is False, f"AUTH with {what} accepted: {ok!r}"
            tampered = as_dict(auth_event(bob, relay.url, raw.challenge))
            tampered["sig"] = tampered["sig"][:-2] + ("00" if tampered["sig"][-2:] != "00" else "11")
            await raw.send(["AUTH", tampered])
            ok = await raw.ok(tampered["id"])
            assert ok[2] is False, f"AUTH with a bad signature accepted: {ok!r}"
            ok = await raw.publish(bob_note)
            assert ok[2] is False and ok[3].startswith("auth-required:"), ok

            await authenticate(raw, bob, relay.url)
            ok = await raw.publish(bob_note)
            assert ok[2] is True, ok
            carol_note = make_event(carol, 1, "carol is not authenticated here")
            ok = await raw.publish(carol_note)
            assert ok[2] is False and ok[3].startswith("auth-required:"), ok
            # Several identities on one connection.
            await authenticate(raw, carol, relay.url)
            ok = await raw.publish(carol_note)
            assert ok[2] is True, ok

        async with raw_conn(relay.url) as raw:
            # A challenge is per connection: this connection's differs, the old AUTH does not work here.
            old = auth_event(bob, relay.url, "not-this-connections-challenge")
            await raw.send(["AUTH", as_dict(old)])
            assert (await raw.ok(hexid(old)))[2] is False
            ok = await raw.publish(make_event(bob, 1, "new connection, no auth"))
            assert ok[2] is False and ok[3].startswith("auth-required:"), ok

    run(body)


def test_nip42_p_tagged_reads(start_relay, rng):
    relay = start_relay("--auth-required")
    alice, xavier, yvonne = new_keys(rng), new_keys(rng), new_keys(rng)

    async def body():
        dm = make_event(alice, 4, "for xavier only", tags=[["p", pk(xavier)]], created_at=now() - 10)
        public = make_event(alice, 1, "for everyone", created_at=now() - 20)
        async with nostr_client(relay.url, auth_keys=alice) as client:
            assert_published(await publish(client, dm), dm)
            assert_published(await publish(client, public), public)

        async with raw_conn(relay.url) as anon, raw_conn(relay.url) as x, \
                raw_conn(relay.url) as y, raw_conn(relay.url) as a:
            # #p for a key the connection is not authenticated as: CLOSED auth-required.
            await anon.send(["REQ", "p", {"#p": [pk(xavier)]}])
            reason = await anon.closed("p")
            assert reason.startswith("auth-required:"), reason
            # Even when one of several filters has the #p.
            await anon.send(["REQ", "p2", {"kinds": [1]}, {"kinds": [4], "#p": [pk(xavier)]}])
            assert (await anon.closed("p2")).startswith("auth-required:")
            await authenticate(y, yvonne, relay.url)
            await y.send(["REQ", "p", {"#p": [pk(xavier)]}])
            assert (await y.closed("p")).startswith("auth-required:")
            await y.send(["REQ", "p3", {"#p": [pk(xavier), pk(yvonne)]}])
            assert (await y.closed("p3")).startswith("auth-required:")

            # Authenticated as xavier: the #p query works.
            await authenticate(x, xavier, relay.url)
            assert ids(await x.stored("p", {"#p": [pk(xavier)]})) == [hexid(dm)]

            # Without #p, a p-tagged event is still only for its recipient or its author.
            by_alice = {"authors": [pk(alice)]}
            assert ids(await anon.stored("all", by_alice)) == [hexid(public)]
            assert ids(await y.stored("all", by_alice)) == [hexid(public)]
            assert ids(await x.stored("all", by_alice)) == [hexid(dm), hexid(public)]
            await authenticate(a, alice, relay.url)
            assert ids(await a.stored("all", by_alice)) == [hexid(dm), hexid(public)]

            # Live: the same rule.
            async with nostr_client(relay.url, auth_keys=alice) as client:
                dm2 = make_event(alice, 4, "second, for xavier", tags=[["p", pk(xavier)]])
                assert_published(await publish(client, dm2), dm2)
                public2 = make_event(alice, 1, "second, for everyone")
                assert_published(await publish(client, public2), public2)
            assert await x.live("all") == as_dict(dm2)
            assert await x.live("all") == as_dict(public2)
            assert await a.live("all") == as_dict(dm2)
            assert await y.live("all") == as_dict(public2)
            assert await anon.live("all") == as_dict(public2)
            await y.assert_no_event("all")
            await anon.assert_no_event("all")

        # rust-nostr with an authenticator for xavier reads xavier's p-tagged events.
        got = await fetch(relay.url, Filter().pubkey(xavier.public_key()), auth_keys=xavier)
        assert set(ids(got)) == {hexid(dm), hexid(dm2)}
        # ... and as yvonne it does not get them.
        got = await fetch(relay.url, Filter().author(alice.public_key()), auth_keys=yvonne)
        assert set(ids(got)) == {hexid(public), hexid(public2)}

    run(body)


# --------------------------------------------------------------------------
# 8. Bad input, oversized messages, rate limiting
# --------------------------------------------------------------------------

JUNK = [
    "not json at all",
    "",
    "[",
    '["EVENT"',
    "{}",
    '{"EVENT": 1}',
    '"REQ"',
    "42",
    "null",
    "[]",
    "[1, 2]",
    "[null]",
    '["FOO", "x"]',
    '["event", {}]',
    '["REQ"]',
    '["REQ", 5, {}]',
    '["REQ", "", {}]',
    '["REQ", "' + "s" * 65 + '", {}]',
    '["CLOSE"]',
    '["CLOSE", 7]',
    '["EVENT"]',
    '["EVENT", "not an object"]',
    '["EVENT", {"id": "zz"}]',
    '["EVENT", {}]',
    '["AUTH"]',
    '["AUTH", 1]',
    '["\\ud800"]',
]


def test_junk_gets_notice_error(start_relay, rng):
    relay = start_relay()
    author = new_keys(rng)

    async def body():
        async with raw_conn(relay.url) as raw:
            for i, text in enumerate(JUNK):
                await raw.send(text)
                notice = await raw.notice()
                assert len(notice) == 2 and isinstance(notice[1], str), notice
                assert notice[1].startswith("error:"), f"{text!r} -> {notice!r}"
                # The connection still works after each piece of junk.
                assert await raw.stored(f"ok{i}", {"kinds": [1], "limit": 1}) == []
                await raw.send(["CLOSE", f"ok{i}"])
            leftovers = await raw.drain(0.2)
            assert not leftovers, f"unexpected extra replies: {leftovers!r}"

            # A REQ whose filter has the wrong types: CLOSED (invalid:) or NOTICE (error:).
            for i, bad_filter in enumerate([{"kinds": "1"}, {"authors": [1]}, {"limit": "x"},
                                            {"since": "yesterday"}, "not a filter", {"ids": {}}]):
                sub = f"bad{i}"
                await raw.send(["REQ", sub, bad_filter])
                reply = await raw.take(lambda m: m[0] == "NOTICE" or (m[0] in ("CLOSED", "EOSE", "EVENT")
                                                                      and m[1] == sub),
                                       f"reply to REQ {bad_filter!r}")
                if reply[0] == "NOTICE":
                    assert reply[1].startswith("error:"), (bad_filter, reply)
                else:
                    assert reply[0] == "CLOSED" and reply[2].startswith(("invalid:", "error:")), (
                        bad_filter, reply)

            # EVENTs that parse but are wrong: OK false, invalid:.
            good = as_dict(make_event(author, 1, "original", tags=[["t", "x"]]))
            bad_sig = dict(good, sig=("0" if good["sig"][0] != "0" else "1") + good["sig"][1:])
            bad_id = dict(good, content="tampered")                       # id no longer matches
            other_sig = dict(good, sig=as_dict(make_event(author, 1, "other"))["sig"])
            wrong_type = dict(good, kind="1")
            no_sig = {k: v for k, v in good.items() if k != "sig"}
            future = as_dict(make_event(author, 1, "from the future", created_at=now() + 86400))
            for what, event in [("bad sig", bad_sig), ("content changed", bad_id),
                                ("another event's sig", other_sig), ("kind as string", wrong_type),
                                ("no sig", no_sig),
                                ("created_at a day ahead", future)]:
                await raw.send(["EVENT", event])
                reply = await raw.take(lambda m: m[0] == "NOTICE" or (m[0] == "OK" and m[1] in
                                                                      (event["id"], event["id"].lower())),
                                       f"OK for an event with {what}")
                if what == "kind as string" and reply[0] == "NOTICE":
                    assert reply[1].startswith("error:"), (what, reply)   # acceptable: not an event
                    continue
                assert reply[0] == "OK" and reply[2] is False and reply[3].startswith("invalid:"), (what, reply)
            assert await raw.stored("none", {"authors": [pk(author)]}) == []
            ok = await raw.publish(Event.from_json(json.dumps(good)))
            assert ok[2] is True, ok

            # Upper-case hex (NIP-01 says lower-case): rust-nostr's parser accepts it too, so
            # either a refusal or acceptance of the normalised event is fine, but not a mix.
            shouting = as_dict(make_event(new_keys(rng), 1, "upper-case hex"))
            upper = dict(shouting, id=shouting["id"].upper(), sig=shouting["sig"].upper())
            await raw.send(["EVENT", upper])
            reply = await raw.take(lambda m: m[0] == "NOTICE" or (m[0] == "OK" and m[1].lower() == shouting["id"]),
                                   "reply to an upper-case-hex event")
            stored = await raw.stored("upper", {"ids": [shouting["id"]]})
            if reply[0] == "OK" and reply[2] is True:
                assert stored == [shouting], stored          # stored in canonical form
            else:
                assert reply[0] == "NOTICE" or reply[3].startswith("invalid:"), reply
                assert stored == []

    run(body)


def test_oversized_messages(start_relay, rng):
    limit = 4096
    relay = start_relay("--max-message-length", str(limit))
    author = new_keys(rng)

    async def body():
        # Just under the limit: accepted.
        small = make_event(author, 1, "s" * (limit - 600))
        assert len(json.dumps(["EVENT", as_dict(small)])) < limit
        async with raw_conn(relay.url) as raw:
            ok = await raw.publish(small)
            assert ok[2] is True, ok

        for size in (limit + 1000, 3 * limit, 2 * 1024 * 1024):
            big = make_event(author, 1, "b" * size)
            async with raw_conn(relay.url) as raw:
                try:
                    await raw.send(["EVENT", as_dict(big)])
                    outcome = await raw.take(lambda m: m[0] in ("NOTICE", "OK"), "reply", timeout=STEP)
                except (ConnectionClosed, OSError) as exc:
                    outcome = exc   # the relay closing the connection is an acceptable answer
                if isinstance(outcome, list):
                    assert (outcome[0] == "NOTICE" and outcome[1].startswith(("error:", "invalid:",
                                                                              "restricted:"))) or \
                           (outcome[0] == "OK" and outcome[2] is False), (size, outcome)
                    # Answered, not dropped: this connection is still usable.
                    assert ids(await raw.stored("same", {"ids": [hexid(small)]})) == [hexid(small)]
                elif isinstance(outcome, ConnectionClosed) and outcome.rcvd is not None:
                    # A close frame: 1009 "message too big" is the code for this.
                    assert outcome.rcvd.code in (1008, 1009), (size, repr(outcome))
            assert relay.alive(), f"relay died on a {size}-byte message\n{relay.describe()}"
            # A new connection is served, and the big event was not stored.
            async with raw_conn(relay.url) as raw:
                got = await raw.stored("after", {"authors": [pk(author)]})
                assert ids(got) == [hexid(small)], size
        async with nostr_client(relay.url) as client:
            again = make_event(author, 1, "still alive")
            assert_published(await publish(client, again), again)

    run(body)


def test_rate_limit_answers_every_event(start_relay, rng):
    relay = start_relay("--rate-limit", "2")
    author = new_keys(rng)
    events = [make_event(author, 1, f"burst {i}") for i in range(30)]

    async def body():
        async with raw_conn(relay.url) as raw:
            for event in events:
                await raw.send(["EVENT", as_dict(event)])
            await raw.drain(1.0)
            oks = {m[1]: m for m in raw.inbox if m[0] == "OK"}
            notices = [m for m in raw.inbox if m[0] == "NOTICE"]
            accepted = [i for i in ids(events) if i in oks and oks[i][2] is True]
            limited = [oks[i] for i in ids(events) if i in oks and oks[i][2] is False]
            assert accepted, f"no event of the burst accepted: {raw.inbox[:5]!r}"
            assert limited or notices, "30 events at once with --rate-limit 2 were all accepted"
            assert all(m[3].startswith("rate-limited:") for m in limited), limited
            assert all(m[1].startswith("rate-limited:") for m in notices), notices
            # NIP-01: every EVENT gets an OK, so a publisher is never left waiting.
            missing = [i for i in ids(events) if i not in oks]
            assert not missing, (
                f"{len(missing)} of {len(events)} EVENTs got no OK (the relay sent "
                f"{len(notices)} NOTICE(s) instead, e.g. {notices[:1]!r})")
        # The limit is per connection: a new connection publishes at once.
        async with nostr_client(relay.url) as client:
            late = make_event(author, 1, "new connection")
            assert_published(await publish(client, late), late)

    run(body)


def test_rate_limit_answers_every_req(start_relay):
    relay = start_relay("--rate-limit", "2")

    async def body():
        async with raw_conn(relay.url) as raw:
            for i in range(30):
                await raw.send(["REQ", f"r{i}", {"kinds": [1], "limit": 1}])
            await raw.drain(1.0)
            answered = {m[1]: m for m in raw.inbox if m[0] in ("EOSE", "CLOSED")}
            closed = [m for m in answered.values() if m[0] == "CLOSED"]
            notices = [m for m in raw.inbox if m[0] == "NOTICE"]
            assert closed or notices, "30 REQs at once with --rate-limit 2 were all served"
            assert all(m[2].startswith("rate-limited:") for m in closed), closed
            # NIP-01: a REQ is answered by EOSE or CLOSED, so the client is not left waiting.
            missing = [f"r{i}" for i in range(30) if f"r{i}" not in answered]
            assert not missing, (
                f"{len(missing)} of 30 REQs got neither EOSE nor CLOSED (the relay sent "
                f"{len(notices)} NOTICE(s) instead, e.g. {notices[:1]!r})")

    run(body)
