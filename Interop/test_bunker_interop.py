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

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from nostr_sdk import (
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
    path = Path(procs.sb).parent / "bunker"
    if not path.exists():
        pytest.fail(f"{path} not built (swift build builds it)", pytrace=False)
    return str(path)


def bunker(procs: Procs, *args) -> str:
    result = subprocess.run([bunker_path(procs), *args], capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, f"bunker {args}: {result.stderr.decode()}"
    return result.stdout.decode().strip()


def serve(procs: Procs, data: Path, relay_url: str):
    proc = procs.start([bunker_path(procs), "serve", "--data-dir", str(data), "--relay", relay_url], "bunker")
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
