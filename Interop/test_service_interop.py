"""The service runtime against a client no one here wrote: rust-nostr (nostr-sdk 0.45.1)
talks to the example service `uppercase-service` (Examples/UppercaseService, built on
NostrService) through `switchboard relay` processes.

The request is kind 25910 p-tagging the service, content encrypted by rust-nostr
(`nip44_encrypt(sk, pk, text, Nip44Version.V2)` or `nip04_encrypt(sk, pk, text)`);
the reply is kind 25911 p-tagging the requester and e-tagging the request, encrypted
back in the same scheme. Both kinds are ephemeral, so the client subscribes before it
sends. rust-nostr checks every received event's id and signature itself.

The example binaries are taken from the directory of $SWITCHBOARD_BIN.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from nostr_sdk import (
    EventBuilder,
    Filter,
    Kind,
    Nip44Version,
    PublicKey,
    RelayUrl,
    ReqTarget,
    Tag,
    nip04_decrypt,
    nip04_encrypt,
    nip44_decrypt,
    nip44_encrypt,
)

from conftest import SEED
from test_pool_interop import OneShot, Procs, aio, procs  # noqa: F401  (fixtures)
from test_relay_interop import (
    hexid,
    new_keys,
    nostr_client,
    publish,
)

REQUEST, REPLY = 25910, 25911
READY = 15.0
STEP = 10.0


def example(procs: Procs, name: str) -> str:
    path = Path(procs.sb).parent / name
    if not path.exists():
        pytest.fail(f"{path} not built (swift build builds the examples)", pytrace=False)
    return str(path)


def start_service(procs: Procs, relays, data_dir: Path):
    argv = [example(procs, "uppercase-service"), "--data-dir", data_dir]
    for relay in relays:
        argv += ["--relay", relay.url]
    service = procs.start(argv, "uppercase-service")
    line = service.wait_for(lambda lines: next((l for l in lines if l.startswith("ready ")), None),
                            READY, "ready line")
    service.pubkey = line.split()[1]
    assert len(service.pubkey) == 64, line
    return service


def request_event(keys, service_hex: str, text: str, scheme: str):
    service_pk = PublicKey.parse(service_hex)
    if scheme == "nip44":
        content = nip44_encrypt(keys.secret_key(), service_pk, text, Nip44Version.V2)
    else:
        content = nip04_encrypt(keys.secret_key(), service_pk, text)
    builder = EventBuilder(Kind(REQUEST), content).tags([Tag.parse(["p", service_hex])])
    return keys.sign_event(builder.finalize_unsigned(keys.public_key()))


async def ask(urls, keys, event, count=1, quiet=1.0):
    """Subscribes to replies for `keys` on every relay, publishes `event` on every relay, and
    collects reply events (deduplicated by rust-nostr's client) until `count` arrived and
    `quiet` seconds passed without more."""
    async with nostr_client(urls[0]) as client:
        for url in urls[1:]:
            await client.add_relay(RelayUrl.parse(url))
        await client.connect(timedelta(seconds=STEP))
        stream = client.notifications()
        sub = await client.subscribe(ReqTarget.auto(
            [Filter().kind(Kind(REPLY)).pubkey(keys.public_key())]))
        assert not sub.failed, sub.failed
        eose = set()
        while len(eose) < len(urls):
            note = await asyncio.wait_for(stream.next(), STEP)
            if note.is_message():
                msg = note.message.as_enum()
                if msg.is_end_of_stored_events() and msg.subscription_id == sub.id:
                    eose.add(str(note.relay_url))
        out = await publish(client, event)
        assert len(out.success) == len(urls), f"[seed {SEED}] publish: {out.success} {out.failed}"
        replies = {}
        deadline = time.monotonic() + STEP
        quiet_until = None
        while True:
            now = time.monotonic()
            if len(replies) >= count:
                quiet_until = quiet_until or now + quiet
                if now >= quiet_until:
                    break
            elif now >= deadline:
                break
            try:
                note = await asyncio.wait_for(stream.next(), max(0.01, (quiet_until or deadline) - now))
            except asyncio.TimeoutError:
                continue
            if note.is_new_event() and note.subscription_id == sub.id:
                replies[hexid(note.event)] = note.event
        return list(replies.values())


@pytest.mark.parametrize("scheme", ["nip44", "nip04"])
def test_rust_nostr_client_gets_an_answer_in_its_scheme(procs, aio, rng, tmp_path, scheme):
    relay = procs.sb_relay("relay")
    service = start_service(procs, [relay], tmp_path / "service")
    keys = new_keys(rng)
    text = f"héllo {scheme} 🦄"
    event = request_event(keys, service.pubkey, text, scheme)

    replies = aio.call(ask([relay.url], keys, event), STEP * 3)
    assert len(replies) == 1, [r.as_json() for r in replies]
    reply = replies[0]
    assert reply.verify()
    assert reply.author().to_hex() == service.pubkey
    tags = json.loads(reply.as_json())["tags"]
    assert ["p", keys.public_key().to_hex()] in tags and ["e", hexid(event)] in tags, tags
    service_pk = PublicKey.parse(service.pubkey)
    if scheme == "nip44":
        plain = nip44_decrypt(keys.secret_key(), service_pk, reply.content())
    else:
        assert "?iv=" in reply.content()
        plain = nip04_decrypt(keys.secret_key(), service_pk, reply.content())
    assert plain == text.upper()


def test_one_request_on_two_relays_is_answered_once(procs, aio, rng, tmp_path):
    relays = [procs.sb_relay("relay-a"), procs.sb_relay("relay-b")]
    service = start_service(procs, relays, tmp_path / "service")
    keys = new_keys(rng)
    event = request_event(keys, service.pubkey, "only once", "nip44")
    # rust-nostr publishes the same event to both relays; the service sees it twice.
    replies = aio.call(ask([r.url for r in relays], keys, event, quiet=1.5), STEP * 3)
    assert len(replies) == 1, f"expected one reply event, got {[r.as_json() for r in replies]}"
    assert nip44_decrypt(keys.secret_key(), PublicKey.parse(service.pubkey), replies[0].content()) == "ONLY ONCE"


def test_example_client_and_restart_keep_the_key(procs, tmp_path):
    relay = procs.sb_relay("relay")
    data = tmp_path / "service"
    service = start_service(procs, [relay], data)
    client = example(procs, "uppercase-client")
    run = OneShot([client, "--relay", relay.url, "--to", service.pubkey, "from the example client"], "", 20)
    assert run.returncode == 0 and run.stdout.strip() == "FROM THE EXAMPLE CLIENT", run.describe()
    assert oct((data / "service.key").stat().st_mode & 0o777) == "0o600"

    # SIGTERM: exits promptly and cleanly; started again, it has the same key.
    service.stopped_by_test = True
    was_alive, exited = service.stop()
    assert was_alive and exited and service.proc.returncode == 0, service.describe()
    again = start_service(procs, [relay], data)
    assert again.pubkey == service.pubkey
    run = OneShot([client, "--relay", relay.url, "--to", again.pubkey, "again"], "", 20)
    assert run.returncode == 0 and run.stdout.strip() == "AGAIN", run.describe()


def http_get(host_port: str, path: str):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://{host_port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_metrics_and_health_endpoint(procs, aio, rng, tmp_path):
    relay = procs.sb_relay("relay")
    argv = [example(procs, "uppercase-service"), "--data-dir", tmp_path / "service", "--relay", relay.url,
            "--http", "127.0.0.1:0"]
    service = procs.start(argv, "uppercase-service")
    ready = service.wait_for(lambda lines: next((l for l in lines if l.startswith("ready ")), None), READY, "ready")
    http = service.wait_for(lambda lines: next((l for l in lines if l.startswith("http ")), None), READY, "http line")
    address = http.split()[1]
    assert address.startswith("127.0.0.1:"), http

    status, body = http_get(address, "/health")
    health = json.loads(body)
    assert status == 200 and health["ready"] is True and health["relays"] == [
        {"url": relay.url, "connected": True, "subscribed": True, "reconnects": 0}], body

    keys = new_keys(rng)
    event = request_event(keys, ready.split()[1], "count me", "nip44")
    assert len(aio.call(ask([relay.url], keys, event), STEP * 3)) == 1
    status, text = http_get(address, "/metrics")
    assert status == 200, text
    assert 'switchboard_requests_total{kind="25910",outcome="answered"} 1' in text, text
    assert "switchboard_handler_duration" in text and "nostr_relay_connected" in text, text

    # The only relay goes away: not ready (503) until it is back.
    relay.kill()
    deadline = time.monotonic() + STEP
    while time.monotonic() < deadline and http_get(address, "/health")[0] != 503:
        time.sleep(0.1)
    status, body = http_get(address, "/health")
    assert status == 503 and json.loads(body)["ready"] is False, body


@pytest.mark.parametrize("daemon", ["bunker", "wallet-bridge", "dvm-host"])
def test_a_daemon_stopped_before_it_is_ready_exits(procs, tmp_path, monkeypatch, daemon):  # noqa: F811
    """A daemon whose only relay refuses connections never becomes ready; SIGTERM must still end it
    (it used to keep waiting for readiness after its runtime had stopped)."""
    import test_pool_interop
    monkeypatch.setenv("BUNKER_PASSPHRASE", "interop passphrase")
    monkeypatch.setitem(test_pool_interop.ENV, "BUNKER_PASSPHRASE", "interop passphrase")
    data = tmp_path / daemon
    extra = []
    if daemon == "bunker":
        procs.run("bunker", "init", "--data-dir", str(data))
    elif daemon == "dvm-host":
        procs.run("dvm-host", "init", "--data-dir", str(data))
        extra = ["--kind", "5050", "--handler", "uppercase"]
    # Port 9 (discard) on loopback: nothing listens, every connection attempt is refused.
    proc = procs.start([procs.binary(daemon), "serve", "--data-dir", str(data), "--relay", "ws://127.0.0.1:9", *extra], daemon)
    time.sleep(1.5)
    assert proc.alive(), proc.describe()
    assert not [line for line in proc.snapshot() if "ready" in line or line.startswith("bunker://")], proc.describe()
    was_alive, exited = proc.stop()
    proc.stopped_by_test = True
    assert was_alive and exited, f"[seed {SEED}] {daemon} did not exit on SIGTERM before it was ready:\n{proc.describe()}"
