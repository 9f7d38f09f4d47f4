"""bunker (NIP-46 remote signer) against a client no one here wrote: rust-nostr's
`NostrConnect` (nostr-sdk 0.45.1) connects with the bunker:// URI that `bunker serve`
prints (or `bunker uri` mints) and calls get_public_key, sign_event (signature and
author checked), nip44_encrypt/decrypt and nip04_encrypt/decrypt with a third party,
through rust-nostr's LocalRelay and through the Python `nostr_relay`.

The `bunker` binary is taken from the directory of $SWITCHBOARD_BIN. rust-nostr
objects live on the `aio` loop thread (see test_pool_interop.py).

rust-nostr API notes (0.45.1): `NostrConnect(NostrConnectUri.parse(uri), app_keys,
timedelta, None)`; its `*_async` methods send `connect` first (with the URI's secret)
and raise NostrSdkError carrying the bunker's `error` string.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from nostr_sdk import (
    Event,
    EventBuilder,
    Keys,
    Kind,
    NostrConnect,
    NostrConnectUri,
    nip04_decrypt,
    nip44_decrypt,
)

import test_pool_interop
from conftest import SEED
from test_pool_interop import Procs, aio, procs, start_rust_relay  # noqa: F401  (fixtures)

PASSPHRASE = "interop passphrase"
READY = 20.0


def bunker_path(procs: Procs) -> str:
    return procs.binary("bunker")


def bunker(procs: Procs, *args) -> str:
    return procs.run("bunker", *args)


def serve(procs: Procs, data: Path, relay_url: str, *extra):
    proc = procs.start([bunker_path(procs), "serve", "--data-dir", str(data), "--relay", relay_url, *extra], "bunker")
    uri = proc.wait_for(lambda lines: next((l for l in lines if l.startswith("bunker://")), None), READY, "bunker:// line")
    return proc, uri.strip()


def connect(uri: str, app=None) -> NostrConnect:
    return NostrConnect(NostrConnectUri.parse(uri), app or Keys.generate(), timedelta(seconds=10), None)


@pytest.fixture(autouse=True)
def passphrase(monkeypatch):
    """Every bunker process here (CLI runs and `serve`) reads the passphrase from the environment."""
    monkeypatch.setenv("BUNKER_PASSPHRASE", PASSPHRASE)
    monkeypatch.setitem(test_pool_interop.ENV, "BUNKER_PASSPHRASE", PASSPHRASE)


@pytest.fixture
def relay_url(request, procs, aio):  # noqa: F811
    if request.param == "rust":
        return start_rust_relay(aio).url
    return procs.nostr_relay().url


@pytest.mark.parametrize("relay_url", ["rust", "nostr_relay"], indirect=True)
def test_rust_nostr_connect_signs_and_encrypts_through_the_bunker(procs, aio, tmp_path, relay_url):  # noqa: F811
    data = tmp_path / "bunker"
    user_npub = bunker(procs, "init", "--data-dir", str(data))
    assert user_npub.startswith("npub1"), user_npub
    _, uri = serve(procs, data, relay_url)
    signer_hex = uri.removeprefix("bunker://").split("?")[0]

    async def session():
        signer = connect(uri)
        user = await signer.get_public_key_async()
        assert user.to_bech32() == user_npub, f"[seed {SEED}] {user.to_bech32()} != {user_npub}"
        assert user.to_hex() != signer_hex, "the remote-signer key must not be the user key"

        unsigned = EventBuilder(Kind(1), "signed by the bunker 🦄").finalize_unsigned(user)
        signed = await signer.sign_event_async(unsigned)
        assert signed.verify(), "the signed event does not verify"
        assert signed.author().to_hex() == user.to_hex()
        assert signed.content() == "signed by the bunker 🦄"
        # Granted everything, but the profile is a sensitive kind: refused with an error naming its permission.
        with pytest.raises(Exception, match=r"unauthorized: sign_event:0 is not granted"):
            await signer.sign_event_async(EventBuilder(Kind(0), '{"name":"mallory"}').finalize_unsigned(user))

        third = Keys.generate()
        text = "for a third party, ünïcode"
        c44 = await signer.nip44_encrypt_async(third.public_key(), text)
        assert nip44_decrypt(third.secret_key(), user, c44) == text
        assert await signer.nip44_decrypt_async(third.public_key(), c44) == text
        c04 = await signer.nip04_encrypt_async(third.public_key(), text)
        assert nip04_decrypt(third.secret_key(), user, c04) == text
        assert await signer.nip04_decrypt_async(third.public_key(), c04) == text

        # The URI's secret is spent: another client (new app keys) is refused with an error reply.
        with pytest.raises(Exception, match="already been used"):
            await connect(uri).get_public_key_async()

        # A freshly minted URI (while serve runs) lets that client in.
        fresh = bunker(procs, "uri", "--data-dir", str(data), "--label", "second app")
        assert (await connect(fresh).get_public_key_async()).to_hex() == user.to_hex()

    aio.call(session(), timeout=60)
    clients = bunker(procs, "clients", "--data-dir", str(data)).splitlines()
    assert len(clients) == 2, clients
    assert any("second app" in line for line in clients), clients


def test_a_burst_of_requests_is_answered_in_turn(procs, aio, tmp_path):  # noqa: F811
    """A client firing 40 requests at once (as one decrypting a DM backlog does) past the bunker's per-client
    limits (2 at once, a burst of 10, then 20/s) gets every answer: the excess waits its turn, none is refused
    and none is left unanswered. The bunker's metrics show the waiting."""
    data = tmp_path / "bunker"
    bunker(procs, "init", "--data-dir", str(data))
    relay = procs.sb_relay("relay")
    proc, uri = serve(procs, data, relay.url, "--http", "127.0.0.1:0",
                      "--client-concurrency", "2", "--client-burst", "10", "--client-rate", "20")
    http = proc.wait_for(lambda lines: next((l for l in lines if l.startswith("http ")), None), READY, "http line")
    third = Keys.generate()

    async def burst():
        signer = connect(uri)
        user = await signer.get_public_key_async()
        texts = [f"message {i}" for i in range(40)]
        sealed = await asyncio.gather(*(signer.nip44_encrypt_async(third.public_key(), t) for t in texts))
        assert [nip44_decrypt(third.secret_key(), user, c) for c in sealed] == texts, f"[seed {SEED}]"

    aio.call(burst(), timeout=60)
    with urllib.request.urlopen(f"http://{http.split()[1]}/metrics", timeout=10) as page:
        metrics = page.read().decode()
    queued = sum(float(m.group(1)) for m in re.finditer(r'^switchboard_requests_queued_total\{[^}]*\} (\S+)$', metrics, re.M))
    refused = [l for l in metrics.splitlines() if l.startswith("switchboard_requests_total") and ("rate-limited" in l or "too-many" in l)]
    assert queued >= 20, metrics
    assert not refused, refused


def test_init_imports_a_key_from_standard_input_into_owner_only_files(procs, tmp_path):  # noqa: F811
    """`bunker init --import -`: a key rust-nostr generated comes through standard input (never on the command
    line, where `ps` and shell history would see it); the bunker prints its npub, and every file it wrote is
    mode 0600 with no temporary file left."""
    keys = Keys.generate()
    data = tmp_path / "bunker"
    result = subprocess.run([bunker_path(procs), "init", "--data-dir", str(data), "--import", "-"],
                            input=keys.secret_key().to_bech32().encode() + b"\n", capture_output=True, timeout=60,
                            env=test_pool_interop.ENV, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == keys.public_key().to_bech32()
    written = [path for path in data.rglob("*") if path.is_file()]
    assert any(path.suffix == ".json" for path in written) and (data / "bunker.sqlite") in written, written
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in written), [(p, oct(p.stat().st_mode)) for p in written]
    assert not any(path.name.endswith(".tmp") for path in written), written


def test_permissions_revocation_and_restart(procs, aio, tmp_path):  # noqa: F811
    data = tmp_path / "bunker"
    bunker(procs, "init", "--data-dir", str(data))
    relay = procs.sb_relay("relay")
    proc, _ = serve(procs, data, relay.url)
    limited = bunker(procs, "uri", "--data-dir", str(data), "--perms", "sign_event:1,nip44_encrypt", "--label", "limited")
    app = Keys.generate()

    async def limited_session():
        signer = connect(limited, app)
        user = await signer.get_public_key_async()
        note = await signer.sign_event_async(EventBuilder(Kind(1), "allowed").finalize_unsigned(user))
        assert note.verify()
        with pytest.raises(Exception, match=r"unauthorized: sign_event:7 is not granted"):
            await signer.sign_event_async(EventBuilder(Kind(7), "+").finalize_unsigned(user))
        with pytest.raises(Exception, match=r"unauthorized: nip04_encrypt is not granted"):
            await signer.nip04_encrypt_async(Keys.generate().public_key(), "x")
        return user

    user = aio.call(limited_session(), timeout=60)

    # Grant more while serve runs; it takes effect on the next request.
    bunker(procs, "grant", "--data-dir", str(data), "limited", "all")

    async def granted():
        signer = connect(limited, app)
        reaction = await signer.sign_event_async(EventBuilder(Kind(7), "+").finalize_unsigned(user))
        assert reaction.verify() and reaction.kind().as_u16() == 7

    aio.call(granted(), timeout=60)

    # Restart: keys, sessions and permissions survive; the client is still connected.
    was_alive, exited = proc.stop()
    proc.stopped_by_test = True
    assert was_alive and exited, f"bunker did not stop on SIGTERM:\n{proc.describe()}"
    proc, _ = serve(procs, data, relay.url)
    aio.call(granted(), timeout=60)

    # Revoked: the same client is refused.
    bunker(procs, "revoke", "--data-dir", str(data), "limited")

    async def revoked():
        with pytest.raises(Exception, match="unauthorized"):
            await connect(limited, app).sign_event_async(EventBuilder(Kind(1), "no").finalize_unsigned(user))

    aio.call(revoked(), timeout=60)


def test_a_client_on_relays_the_bunker_left_is_answered_there_and_switches(procs, tmp_path):  # noqa: F811
    """The operator moves the bunker to another relay. A client still on the relay its bunker:// URI named is
    answered there (else it could never learn of the move); `switch_relays` tells it the new list (null while
    nothing changed), and on the new relay it keeps its session. The client is the library's (`switchboard
    nip46`), which sends `connect` with its spent secret first each time: that is a retry, answered `ack`."""
    data = tmp_path / "bunker"
    bunker(procs, "init", "--data-dir", str(data))
    old = procs.sb_relay("old-relay")
    proc, _ = serve(procs, data, old.url)
    uri = bunker(procs, "uri", "--data-dir", str(data), "--label", "mover")
    nip46 = [procs.sb, "nip46", "--key-file", str(tmp_path / "client.key"), "--timeout", "20"]

    def call(uri, *args) -> str:
        result = subprocess.run([*nip46, uri, *args], capture_output=True, timeout=60, check=False, env=test_pool_interop.ENV)
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode().strip()

    user = call(uri, "get_public_key")
    assert call(uri, "switch_relays") == "null"
    was_alive, exited = proc.stop()
    proc.stopped_by_test = True
    assert was_alive and exited, proc.describe()

    new = procs.sb_relay("new-relay")
    serve(procs, data, new.url)
    assert call(uri, "get_public_key") == user
    assert json.loads(call(uri, "switch_relays")) == [new.url]
    moved = uri.replace(urllib.parse.quote(old.url, safe=""), urllib.parse.quote(new.url, safe=""))
    assert moved != uri, uri
    assert call(moved, "get_public_key") == user
    assert call(moved, "switch_relays") == "null"


def test_a_client_of_two_user_keys_is_granted_per_key_and_revoked_from_both(procs, aio, tmp_path):  # noqa: F811
    """One app connected to two of the bunker's user keys: `grant` asks which (--key), `revoke` ends both."""
    data = tmp_path / "bunker"
    first = bunker(procs, "init", "--data-dir", str(data))
    second = bunker(procs, "key", "add", "--data-dir", str(data))
    relay = procs.sb_relay("relay")
    serve(procs, data, relay.url)
    uris = [bunker(procs, "uri", "--data-dir", str(data), "--key", npub, "--perms", "sign_event:1") for npub in (first, second)]
    app = Keys.generate()

    async def sign(uri, kind):
        signer = connect(uri, app)
        user = await signer.get_public_key_async()
        return await signer.sign_event_async(EventBuilder(Kind(kind), "x").finalize_unsigned(user))

    for uri in uris:
        assert aio.call(sign(uri, 1), timeout=60).verify()
    client = app.public_key().to_hex()
    ambiguous = subprocess.run([bunker_path(procs), "grant", "--data-dir", str(data), client, "all"], capture_output=True, timeout=60)
    assert ambiguous.returncode != 0 and b"connected to 2 user keys; choose one with --key" in ambiguous.stderr, ambiguous.stderr
    bunker(procs, "grant", "--data-dir", str(data), client, "all", "--key", second)
    assert aio.call(sign(uris[1], 7), timeout=60).kind().as_u16() == 7
    with pytest.raises(Exception, match=r"sign_event:7 is not granted"):
        aio.call(sign(uris[0], 7), timeout=60)

    revoked = bunker(procs, "revoke", "--data-dir", str(data), client).splitlines()
    assert len(revoked) == 2 and all(line.startswith(f"revoked {client}") for line in revoked), revoked
    for uri in uris:
        with pytest.raises(Exception, match="unauthorized"):
            aio.call(sign(uri, 1), timeout=60)


def test_nostrconnect_started_by_rust_nostr_client(procs, aio, tmp_path):  # noqa: F811
    """The client-initiated flow: rust-nostr's NostrConnect with a nostrconnect:// URI on its own relay (rust's
    LocalRelay, which the bunker does not use); `bunker connect` makes the running daemon answer there with the
    URI's secret, and serve the client there from then on."""
    data = tmp_path / "bunker"
    user_npub = bunker(procs, "init", "--data-dir", str(data))
    relay = procs.sb_relay("bunker-relay")
    idle_uri = f"nostrconnect://{Keys.generate().public_key().to_hex()}?relay=ws%3A%2F%2F127.0.0.1%3A1&secret=x"
    # No daemon yet: `connect` says so at once instead of waiting for an answer that cannot come.
    idle = subprocess.run([bunker_path(procs), "connect", "--data-dir", str(data), idle_uri], capture_output=True, timeout=20, check=False)
    assert idle.returncode != 0 and b"no `bunker serve" in idle.stderr, idle.stderr.decode()
    serve(procs, data, relay.url)
    # One serve per data directory: a second one would answer the same clients and clear the first one's approvals.
    second = subprocess.run([bunker_path(procs), "serve", "--data-dir", str(data), "--relay", relay.url], capture_output=True, timeout=30, check=False)
    assert second.returncode != 0 and b"another serve is running on" in second.stderr, second.stderr.decode()
    client_relay = start_rust_relay(aio).url
    app = Keys.generate()
    secret = "interop-" + app.public_key().to_hex()[:8]
    # rust-nostr 0.45 parses only the older form, with name and url in a JSON `metadata` parameter.
    metadata = json.dumps({"name": "Interop App"})
    query = urllib.parse.urlencode([("relay", client_relay), ("secret", secret), ("perms", "sign_event:1,nip44_encrypt"), ("metadata", metadata)])
    uri = f"nostrconnect://{app.public_key().to_hex()}?{query}"

    async def session():
        signer = NostrConnect(NostrConnectUri.parse(uri), app, timedelta(seconds=30), None)
        # The client listens first (the response is an ephemeral event), then the operator accepts its URI.
        asked = asyncio.ensure_future(signer.get_public_key_async())
        await asyncio.sleep(1.0)
        accept = await asyncio.create_subprocess_exec(
            bunker_path(procs), "connect", "--data-dir", str(data), "--label", "from nostrconnect", uri,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=test_pool_interop.ENV)
        out, err = await asyncio.wait_for(accept.communicate(), 40)
        assert accept.returncode == 0, err.decode()
        assert out.decode().startswith(f"connected {app.public_key().to_hex()} (Interop App)"), out.decode()
        user = await asyncio.wait_for(asked, 30)
        assert user.to_bech32() == user_npub
        note = await signer.sign_event_async(EventBuilder(Kind(1), "via nostrconnect").finalize_unsigned(user))
        assert note.verify() and note.author().to_hex() == user.to_hex()
        third = Keys.generate()
        assert nip44_decrypt(third.secret_key(), user, await signer.nip44_encrypt_async(third.public_key(), "hi")) == "hi"

    aio.call(session(), timeout=90)
    clients = bunker(procs, "clients", "--data-dir", str(data)).splitlines()
    assert len(clients) == 1, clients
    line = clients[0]
    assert line.startswith(app.public_key().to_hex()) and "from nostrconnect" in line, line
    # What the URI asked for is recorded as requested; the grant is the operator's (all, by default).
    assert "requested=nip44_encrypt,sign_event:1" in line, line

    # A URI whose relay does not exist: the CLI reports the failure instead of claiming success.
    bad = f"nostrconnect://{Keys.generate().public_key().to_hex()}?relay=ws%3A%2F%2F127.0.0.1%3A1&secret=x"
    result = subprocess.run([bunker_path(procs), "connect", "--data-dir", str(data), bad], capture_output=True, timeout=60, check=False)
    assert result.returncode != 0 and b"failed" in result.stderr, result.stderr.decode()


def sign_outside_the_grant(procs, tmp_path, label: str, decide) -> Path:
    """A bunker with its approval listener and a client (`switchboard nip46`, the library's client) granted kind 1:
    kind 1 is signed at once; kind 7 gets an auth challenge, which `decide(data, stderr_path)` settles while the
    client waits; the signed kind 7 must then arrive. Returns the bunker's data directory."""
    data = tmp_path / "bunker"
    bunker(procs, "init", "--data-dir", str(data))
    relay = procs.sb_relay("relay")
    proc, _ = serve(procs, data, relay.url, "--http", "127.0.0.1:0")
    proc.wait_for(lambda lines: any(l.startswith("http ") for l in lines), READY, "http line")
    uri = bunker(procs, "uri", "--data-dir", str(data), "--perms", "sign_event:1", "--label", label)
    key_file = tmp_path / "client.key"
    nip46 = [procs.sb, "nip46", "--key-file", str(key_file), "--timeout", "60", uri, "sign_event"]
    allowed = subprocess.run([*nip46, '{"kind":1,"content":"granted"}'], capture_output=True, timeout=60, check=False)
    assert allowed.returncode == 0, allowed.stderr.decode()

    err_path = tmp_path / "nip46.stderr"
    with open(err_path, "wb") as err:
        child = subprocess.Popen([*nip46, '{"kind":7,"content":"+","tags":[["e","00"]]}'], stdout=subprocess.PIPE, stderr=err,
                                 env=test_pool_interop.ENV)
        try:
            decide(data, err_path)
            out, _ = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert child.returncode == 0, err_path.read_text()
    signed = Event.from_json(out.decode().strip())
    assert signed.verify() and signed.kind().as_u16() == 7
    return data


def test_rust_nostr_waiting_on_the_operator_is_answered_when_the_bunker_stops(procs, aio, tmp_path):  # noqa: F811
    """rust-nostr's client asks for a kind outside its grant and waits on the auth challenge; the bunker is stopped
    (SIGTERM) before the operator decides: the client gets an error reply saying to send the request again (NIP-46
    requests are ephemeral, so they would not come back after a restart), not a silent timeout."""
    data = tmp_path / "bunker"
    bunker(procs, "init", "--data-dir", str(data))
    relay = start_rust_relay(aio)
    proc, _ = serve(procs, data, relay.url, "--http", "127.0.0.1:0")
    proc.wait_for(lambda lines: any(l.startswith("http ") for l in lines), READY, "http line")
    uri = bunker(procs, "uri", "--data-dir", str(data), "--perms", "sign_event:1", "--label", "waiting app")

    async def session():
        signer = NostrConnect(NostrConnectUri.parse(uri), Keys.generate(), timedelta(seconds=60), None)
        user = await signer.get_public_key_async()
        waiting = asyncio.ensure_future(signer.sign_event_async(EventBuilder(Kind(7), "+").finalize_unsigned(user)))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "needs sign_event:7" not in await asyncio.to_thread(
                bunker, procs, "approvals", "--data-dir", str(data)):
            await asyncio.sleep(0.2)
        # In a thread: this loop also runs rust-nostr's relay, which must keep serving meanwhile.
        was_alive, exited = await asyncio.to_thread(proc.stop)
        proc.stopped_by_test = True
        assert was_alive and exited, proc.describe()
        with pytest.raises(Exception, match=r"unavailable: the bunker stopped before the operator decided; send the request again"):
            await asyncio.wait_for(waiting, 30)

    aio.call(session(), timeout=90)
    audit = bunker(procs, "audit", "--data-dir", str(data), "--limit", "1")
    assert "sign_event kind=7  cancelled" in audit, audit
    assert not proc.logged_errors(), proc.logged_errors()


def test_auth_challenge_approved_on_the_page(procs, tmp_path):  # noqa: F811
    """A kind outside the grant: the client gets an auth_url; the test, as the operator's browser, opens the page
    and approves always; the signed event arrives, the grant now includes the kind, and the audit log says how it
    was decided."""
    def on_the_page(data, err_path):
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline:
            found = re.search(r"approval needed: open (\S+)", err_path.read_text())
            url = found and found.group(1)
            time.sleep(0.1)
        assert url, f"no auth challenge: {err_path.read_text()}"
        # The client has the URL too: without the operator's sign-in the page asks for it and shows nothing.
        try:
            urllib.request.urlopen(url, timeout=10)
            raise AssertionError("the page opened without signing in")
        except urllib.error.HTTPError as refused:
            assert refused.code == 401 and b'name="token"' in refused.read()
        # The operator signs in with the token from the data directory (0600), as a browser would.
        token_file = data / "approval.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        login = url.rsplit("/", 1)[0] + "/login"
        form = urllib.parse.urlencode({"token": token_file.read_text().strip(), "next": url.rsplit("/", 1)[1]}).encode()
        with urllib.request.urlopen(urllib.request.Request(login, data=form), timeout=10) as signed_in:
            cookie = signed_in.headers["Set-Cookie"].split(";")[0]
        assert cookie.startswith("bunker_operator=") and token_file.read_text().strip() not in cookie, cookie
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Cookie": cookie}), timeout=10) as page:
            html = page.read().decode()
            assert page.headers["X-Frame-Options"] == "DENY"
        assert "sign_event:7" in html and "web app" in html, html
        token = re.search(r'name="token" value="([0-9a-f]+)"', html).group(1)
        form = urllib.parse.urlencode({"token": token, "decision": "always"}).encode()
        with urllib.request.urlopen(urllib.request.Request(url, data=form, headers={"Cookie": cookie}), timeout=10) as done:
            assert done.status == 200

    data = sign_outside_the_grant(procs, tmp_path, "web app", on_the_page)
    clients = bunker(procs, "clients", "--data-dir", str(data))
    assert "perms=sign_event:1,sign_event:7" in clients, clients
    audit = bunker(procs, "audit", "--data-dir", str(data), "--limit", "3").splitlines()
    assert "sign_event kind=7  approved-always" in audit[0], audit
    assert not any("granted" in line or '"+"' in line for line in audit), "the audit log holds no content"


def test_auth_challenge_decided_from_the_terminal(procs, tmp_path):  # noqa: F811
    """The same challenge decided on the server with `bunker approvals` and `bunker approve`, no browser: the
    running serve applies the decision and the signed event reaches the waiting client."""
    def in_the_terminal(data, err_path):
        deadline, waiting = time.monotonic() + 30, []
        while not waiting and time.monotonic() < deadline:
            waiting = [l for l in bunker(procs, "approvals", "--data-dir", str(data)).splitlines() if "needs sign_event:7" in l]
            time.sleep(0.2)
        assert waiting, f"no waiting request listed: {err_path.read_text()}"
        assert "terminal app" in waiting[0], waiting
        assert bunker(procs, "approve", "--data-dir", str(data), waiting[0].split()[0][:12]) == "approved once"

    data = sign_outside_the_grant(procs, tmp_path, "terminal app", in_the_terminal)
    assert bunker(procs, "approvals", "--data-dir", str(data)) == ""
    unknown = subprocess.run([bunker_path(procs), "deny", "--data-dir", str(data), "ffff"], capture_output=True, timeout=60, check=False)
    assert unknown.returncode != 0 and b"no waiting request" in unknown.stderr, unknown

