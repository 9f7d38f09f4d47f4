"""wallet-bridge (NIP-47 wallet service) against a client no one here wrote:
rust-nostr's `NostrWalletConnect` (nostr-sdk 0.45.1) uses the nostr+walletconnect://
URIs `wallet-bridge connect` prints, through rust-nostr's LocalRelay and the Python
`nostr_relay`, with the built-in ledger and with a real LNbits (pip lnbits==1.6.2,
FakeWallet funding source). Invoices are cross-checked with the Python `bolt11`
package (decoding ours) and `switchboard bolt11` (decoding LNbits').

The `wallet-bridge` binary is taken from the directory of $SWITCHBOARD_BIN. LNbits
runs from its own virtual environment ($LNBITS_PYTHON, made by `make test`).

rust-nostr API notes (0.45.1, see Docs/nips.md): the client reads the wallet's kind
13194 info event once, before its first request, and uses NIP-44 when its
`encryption` tag lists nip44_v2 (else NIP-04); it matches responses by `#e`. Errors
raise NostrSdkError carrying "<message> [<CodeName>]". Python has no notification
API, so notifications are read with a plain subscription on the client's relays.
It does not know the UNSUPPORTED_ENCRYPTION code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import bolt11
import pytest
from nostr_sdk import (
    Client,
    Filter,
    Keys,
    Kind,
    ListTransactionsRequest,
    LookupInvoiceRequest,
    MakeInvoiceRequest,
    Method,
    NostrWalletConnectBuilder,
    NostrWalletConnectUri,
    PayInvoiceRequest,
    ReqTarget,
    RelayUrl,
    Timestamp,
    TransactionState,
    TransactionType,
)

from conftest import SEED, terminate
import test_pool_interop
from test_pool_interop import Procs, aio, procs, says_draining, start_rust_relay  # noqa: F401  (fixtures)

READY = 30.0          # wallet-bridge prints its ready line within this
LNBITS_START = 90.0   # LNbits answers its health check within this (first start migrates its database)


def wb_path(procs: Procs) -> str:
    return procs.binary("wallet-bridge")


def wb(procs: Procs, *args) -> str:
    return procs.run("wallet-bridge", *args)


def serve(procs: Procs, data: Path, relay_url: str, *extra, must_survive=True):
    proc = procs.start([wb_path(procs), "serve", "--data-dir", str(data), "--relay", relay_url, *extra], "wallet-bridge",
                       must_survive=must_survive)
    proc.wait_for(lambda lines: next((l for l in lines if l.startswith("wallet-bridge ready")), None), READY, "the ready line")
    return proc


def connect(procs: Procs, data: Path, name: str, *extra) -> tuple[str, str]:
    lines = wb(procs, "connect", "--data-dir", str(data), "--name", name, *extra).splitlines()
    assert lines[0].startswith("connection "), lines
    uri = next(l for l in lines if l.startswith("nostr+walletconnect://"))
    return lines[0].split()[1], uri


def nwc(uri: str):
    return NostrWalletConnectBuilder(NostrWalletConnectUri.parse(uri)).timeout(timedelta(seconds=20)).build()


async def wait_for_info(relay_url: str, uri: str, timeout: float = 10.0) -> dict:
    """The wallet's kind 13194 info event, once a relay has it (the client reads it before its first request)."""
    wallet = NostrWalletConnectUri.parse(uri).public_key()
    client = Client()
    await client.add_relay(RelayUrl.parse(relay_url))
    await client.connect()
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            events = await client.fetch_events(ReqTarget.auto([Filter().author(wallet).kind(Kind(13194))]), timedelta(seconds=2))
            found = events if isinstance(events, list) else events.to_vec()
            if found:
                event = found[0]
                tags = event.tags()
                return {"id": event.id().to_hex(), "content": event.content(),
                        "tags": [tag.to_vec() for tag in (tags if isinstance(tags, list) else tags.to_vec())]}
        raise AssertionError(f"[seed {SEED}] no info event from {wallet.to_hex()} within {timeout}s")
    finally:
        await client.shutdown()


class Notifications:
    """The wallet's notifications to one connection (both kinds), read with a plain subscription."""

    def __init__(self, uri: str):
        self.uri = NostrWalletConnectUri.parse(uri)
        self.keys = Keys(self.uri.secret())
        self.client = Client()

    async def start(self):
        for relay in self.uri.relays():
            await self.client.add_relay(relay)
        await self.client.connect()
        since = Timestamp.from_secs(Timestamp.now().as_secs() - 5)
        wanted = Filter().author(self.uri.public_key()).pubkey(self.keys.public_key()).kinds([Kind(23196), Kind(23197)]).since(since)
        await self.client.subscribe(ReqTarget.auto([wanted]), id="nwc-notifications")
        self.stream = self.client.notifications()

    async def collect(self, count: int, timeout: float, payment_hash: str) -> list:
        """`count` notifications about `payment_hash` (others, such as stored earlier ones, are skipped)."""
        import asyncio

        got, deadline = [], time.time() + timeout
        while len(got) < count and time.time() < deadline:
            try:
                note = await asyncio.wait_for(self.stream.next(), timeout=max(0.1, deadline - time.time()))
            except asyncio.TimeoutError:
                break
            if note is None:
                break
            if note.is_NEW_EVENT() and note.subscription_id == "nwc-notifications":
                event = note.event
                kind = event.kind().as_u16()
                decrypt = self.keys.nip44_decrypt if kind == 23197 else self.keys.nip04_decrypt
                note = json.loads(decrypt(event.author(), event.content()))
                if note.get("notification", {}).get("payment_hash") == payment_hash:
                    got.append((kind, note))
        return got

    async def stop(self):
        await self.client.shutdown()


def error_text(excinfo) -> str:
    error = excinfo.value
    return str(error.args[0]) if error.args else str(error)


@pytest.fixture
def relay_url(request, procs, aio):  # noqa: F811
    if request.param == "rust":
        return start_rust_relay(aio).url
    return procs.nostr_relay().url


@pytest.mark.parametrize("relay_url", ["rust", "nostr_relay"], indirect=True)
def test_rust_nostr_pays_between_two_ledger_connections(procs, aio, tmp_path, relay_url):  # noqa: F811
    data = tmp_path / "wallet"
    bridge = serve(procs, data, relay_url, must_survive=False)
    payer_id, payer_uri = connect(procs, data, "payer", "--budget", "50000", "--period", "daily")
    _, payee_uri = connect(procs, data, "payee", "--unlimited")
    # A connection that may pay is made only with a budget, or knowingly without one.
    careless = subprocess.run([wb_path(procs), "connect", "--data-dir", str(data), "--name", "careless"],
                              capture_output=True, timeout=60, check=False)
    assert careless.returncode != 0 and b"needs --budget" in careless.stderr, careless
    assert "balance 100000 msat" in wb(procs, "ledger", "credit", "--data-dir", str(data), "payer", "100000")

    async def session():
        info_event = await wait_for_info(relay_url, payer_uri)
        assert ["encryption", "nip44_v2 nip04"] in info_event["tags"], info_event
        assert "pay_invoice" in info_event["content"].split(), info_event
        await wait_for_info(relay_url, payee_uri)
        payer, payee = nwc(payer_uri), nwc(payee_uri)

        info = await payer.get_info()
        assert info.network == "regtest" and info.alias == "switchboard ledger", str(info)
        assert Method.PAY_INVOICE() in info.methods, str(info.methods)
        assert (await payer.get_balance()).balance == 100_000

        made = await payee.make_invoice(MakeInvoiceRequest(amount=21_000, description="interop coffee", description_hash=None, expiry=600))
        decoded = bolt11.decode(made.invoice)
        assert decoded.amount_msat == 21_000, decoded.data
        assert decoded.payment_hash == made.payment_hash, decoded.data
        assert decoded.description == "interop coffee", decoded.data
        assert decoded.payee == info.pubkey, f"[seed {SEED}] invoice payee {decoded.payee} != node {info.pubkey}"
        assert decoded.expiry == 600

        notes = Notifications(payee_uri)
        await notes.start()
        paid = await payer.pay_invoice(PayInvoiceRequest(id=None, invoice=made.invoice, amount=None))
        assert hashlib.sha256(bytes.fromhex(paid.preimage)).hexdigest() == made.payment_hash
        assert (await payer.get_balance()).balance == 79_000
        assert (await payee.get_balance()).balance == 21_000

        incoming = await payee.lookup_invoice(LookupInvoiceRequest(payment_hash=made.payment_hash, invoice=None))
        assert incoming.transaction_type == TransactionType.INCOMING and incoming.state == TransactionState.SETTLED
        assert incoming.preimage == paid.preimage and incoming.settled_at is not None
        outgoing = await payer.lookup_invoice(LookupInvoiceRequest(payment_hash=None, invoice=made.invoice))
        assert outgoing.transaction_type == TransactionType.OUTGOING and outgoing.state == TransactionState.SETTLED
        listed = await payer.list_transactions(ListTransactionsRequest(
            _from=None, until=None, limit=10, offset=None, unpaid=None, transaction_type=None))
        assert [t.payment_hash for t in listed] == [made.payment_hash]

        received = await notes.collect(2, timeout=10, payment_hash=made.payment_hash)
        await notes.stop()
        assert sorted(kind for kind, _ in received) == [23196, 23197], received
        for _, note in received:
            assert note["notification_type"] == "payment_received"
            assert note["notification"]["payment_hash"] == made.payment_hash
            assert note["notification"]["state"] == "settled"

        # 21,000 spent of 50,000 a day: 40,000 more is refused, and nothing moves.
        big = await payee.make_invoice(MakeInvoiceRequest(amount=40_000, description=None, description_hash=None, expiry=None))
        with pytest.raises(Exception) as refused:
            await payer.pay_invoice(PayInvoiceRequest(id=None, invoice=big.invoice, amount=None))
        assert "[QuotaExceeded]" in error_text(refused), error_text(refused)
        assert (await payer.get_balance()).balance == 79_000

        # An invoice of another node cannot be routed by the ledger.
        foreign = bolt11.encode(bolt11.Bolt11(
            currency="bcrt", date=int(time.time()), amount_msat=1_000,
            tags=bolt11.Tags.from_dict({"payment_hash": "11" * 32, "payment_secret": "22" * 32, "description": "elsewhere"})),
            "33" * 32)
        with pytest.raises(Exception) as failed:
            await payer.pay_invoice(PayInvoiceRequest(id=None, invoice=foreign, amount=None))
        assert "[PaymentFailed]" in error_text(failed), error_text(failed)

        for client in (payer, payee):
            await client.client().shutdown()

    aio.call(session(), timeout=120)
    listing = wb(procs, "connections", "--data-dir", str(data))
    assert f"{payer_id}  payer  live  budget=21000/50000msat/daily" in listing, listing

    # Revoked: the info event is withdrawn with a NIP-09 deletion request, which this relay honours.
    wb(procs, "revoke", "--data-dir", str(data), "payer")

    async def withdrawn(uri):
        wallet = NostrWalletConnectUri.parse(uri).public_key()
        client = Client()
        await client.add_relay(RelayUrl.parse(relay_url))
        await client.connect()
        try:
            deadline = time.time() + 15
            while time.time() < deadline:
                found = await client.fetch_events(ReqTarget.auto([Filter().author(wallet).kinds([Kind(13194), Kind(5)])]), timedelta(seconds=2))
                events = found if isinstance(found, list) else found.to_vec()
                kinds = sorted(e.kind().as_u16() for e in events)
                if kinds == [5]:
                    tags = events[0].tags()
                    return [t.to_vec() for t in (tags if isinstance(tags, list) else tags.to_vec())]
                await asyncio.sleep(0.5)
            raise AssertionError(f"[seed {SEED}] the info event was not withdrawn: kinds {kinds}, {[(e.kind().as_u16(), e.id().to_hex(), [t.to_vec() for t in (e.tags() if isinstance(e.tags(), list) else e.tags().to_vec())]) for e in events]}")
        finally:
            await client.shutdown()
    tags = aio.call(withdrawn(payer_uri), timeout=30)
    assert ["a", f"13194:{NostrWalletConnectUri.parse(payer_uri).public_key().to_hex()}:"] in tags, tags

    # Revoked while the bridge is stopped: after the restart the deletion still names the info event by id
    # (nostr_relay deletes by id only), as the relay holds it.
    bridge.stop()
    info = aio.call(wait_for_info(relay_url, payee_uri), READY)
    wb(procs, "revoke", "--data-dir", str(data), "payee")
    serve(procs, data, relay_url)
    tags = aio.call(withdrawn(payee_uri), timeout=30)
    assert ["e", info["id"]] in [t[:2] for t in tags], f"[seed {SEED}] {tags} {info}"


def test_a_burst_past_the_limits_is_answered_in_turn(procs, aio, tmp_path):  # noqa: F811
    """rust-nostr's NostrWalletConnect fires 30 get_balance calls at once against a client limit of 2 at once and
    a burst of 5 at 20/s: every call is answered with the balance, none RATE_LIMITED."""
    relay_url = start_rust_relay(aio).url
    data = tmp_path / "wallet"
    serve(procs, data, relay_url, "--client-concurrency", "2", "--client-burst", "5", "--client-rate", "20")
    _, uri = connect(procs, data, "eager", "--methods", "get_balance")
    wb(procs, "ledger", "credit", "--data-dir", str(data), "eager", "12345")

    async def burst():
        await wait_for_info(relay_url, uri)
        client = nwc(uri)
        try:
            balances = await asyncio.gather(*(client.get_balance() for _ in range(30)))
        finally:
            await client.client().shutdown()
        assert [b.balance for b in balances] == [12_345] * 30, f"[seed {SEED}] {balances}"

    aio.call(burst(), timeout=90)


@pytest.mark.parametrize("relay_url", ["rust", "nostr_relay"], indirect=True)
def test_a_printed_uri_is_served_at_once(procs, aio, tmp_path, relay_url):  # noqa: F811
    """`connect` prints a URI only once the running `serve` listens for its wallet key (the relay has the
    connection's info event), so an app's first request, an ephemeral event no relay keeps, sent the moment the
    URI appears is answered: rust-nostr's NostrWalletConnect asks at once, five times over. Without a `serve`,
    `connect` prints at once and says so, and the next `serve` serves the connection."""
    data = tmp_path / "wallet"
    started = time.time()
    early = subprocess.run([wb_path(procs), "connect", "--data-dir", str(data), "--name", "early", "--relay", relay_url,
                            "--methods", "get_balance"], capture_output=True, timeout=60, check=False)
    assert early.returncode == 0 and b"no `wallet-bridge serve` is running" in early.stderr, early
    assert time.time() - started < 20, "waited for a serve that is not running"
    early_uri = next(l for l in early.stdout.decode().splitlines() if l.startswith("nostr+walletconnect://"))
    serve(procs, data, relay_url)

    async def first_request(uri: str):
        client = nwc(uri)
        try:
            assert (await client.get_balance()).balance == 0
        finally:
            await client.client().shutdown()

    aio.call(first_request(early_uri), timeout=60)
    uris = [early_uri]
    # The last one names a relay `serve` is not on yet: it starts listening there for the new connection.
    elsewhere = start_rust_relay(aio).url
    for extra in [[]] * 4 + [["--relay", elsewhere]]:
        made = subprocess.run([wb_path(procs), "connect", "--data-dir", str(data), "--name", f"app{len(uris)}",
                               "--methods", "get_balance", *extra], capture_output=True, timeout=60, check=False)
        assert made.returncode == 0 and b"warning" not in made.stderr, made
        uri = next(l for l in made.stdout.decode().splitlines() if l.startswith("nostr+walletconnect://"))
        uris.append(uri)
        aio.call(first_request(uri), timeout=60)
    assert elsewhere in uris[-1].replace("%3A", ":").replace("%2F", "/"), uris[-1]


def test_invoices_decode_the_same_in_python_bolt11_and_switchboard(procs, tmp_path):  # noqa: F811
    """A Python-made invoice (bolt11.encode, another signing key) read by switchboard, field by field."""
    invoice = bolt11.encode(bolt11.Bolt11(
        currency="bc", date=1_700_000_000, amount_msat=2_500_000_000,
        tags=bolt11.Tags.from_dict({
            "payment_hash": "ab" * 32, "payment_secret": "cd" * 32, "description_hash": "ef" * 32, "expire_time": 7200,
            "min_final_cltv_expiry": 40,
        })), "44" * 32)
    expected = bolt11.decode(invoice)
    ours = json.loads(subprocess.run([procs.sb, "bolt11", invoice], capture_output=True, check=True, timeout=30).stdout)
    assert ours["network"] == "mainnet"
    assert ours["amount_msat"] == expected.amount_msat == 2_500_000_000
    assert ours["payment_hash"] == expected.payment_hash
    assert ours["payment_secret"] == expected.payment_secret
    assert ours["description_hash"] == expected.description_hash
    assert ours["expiry"] == 7200 and ours["min_final_cltv_expiry"] == 40
    assert ours["timestamp"] == expected.date
    assert ours["payee"] == expected.payee
    # One changed character: the checksum no longer matches.
    broken = invoice[:-8] + ("q" if invoice[-8] != "q" else "p") + invoice[-7:]
    result = subprocess.run([procs.sb, "bolt11", broken], capture_output=True, timeout=30)
    assert result.returncode == 1 and b"checksum" in result.stderr, result.stderr


# MARK: LNbits

LNBITS_ENV = {
    "LNBITS_BACKEND_WALLET_CLASS": "FakeWallet", "FAKE_WALLET_SECRET": "switchboard-interop",
    # No network: no extension manifests, prices or exchange rates.
    "LNBITS_EXTENSIONS_MANIFESTS": "[]", "LNBITS_WASM_EXTENSIONS_MANIFESTS": "[]", "LNBITS_EXTENSIONS_DEACTIVATE_ALL": "true",
    "LNBITS_PRICE_AGGREGATOR_ENABLED": "false", "LNBITS_EXCHANGE_RATE_PROVIDERS": "[]",
    "LNBITS_RATE_LIMIT_NO": "100000", "AUTH_HTTPS_ONLY": "false",
    # A fee reserve above the bridge's own 1 %: budgets must count LNbits' figure.
    "LNBITS_RESERVE_FEE_PERCENT": "2.0",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LNbits:
    """A throw-away LNbits (FakeWallet) on a loopback port, with its super user set up."""

    def __init__(self, python: str, data: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        site = subprocess.run(
            [python, "-c", "import importlib.util,os;print(os.path.dirname(os.path.dirname(importlib.util.find_spec('lnbits').origin)))"],
            capture_output=True, check=True, text=True, timeout=60).stdout.strip()
        env = {"PATH": f"{Path(python).parent}:/usr/bin:/bin", "HOME": str(data), "LNBITS_DATA_FOLDER": str(data),
               "LNBITS_EXTENSIONS_PATH": str(data), "HOST": "127.0.0.1", "PORT": str(self.port), **LNBITS_ENV}
        self.log = open(data / "lnbits.log", "w")
        # LNbits finds its static files relative to the working directory: the folder holding the package.
        self.proc = subprocess.Popen(
            [python, "-m", "uvicorn", "lnbits.__main__:app", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=site, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        status, body = self.call("PUT", "/api/v1/auth/first_install",
                                 {"username": "admin", "password": "interop-secret", "password_repeat": "interop-secret"})
        assert status == 200, (status, body)
        self.token = body["access_token"]

    def _wait_ready(self):
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        opener = urllib.request.build_opener(NoRedirect)
        deadline = time.time() + LNBITS_START
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"LNbits exited: {Path(self.log.name).read_text()[-3000:]}")
            try:
                opener.open(self.base + "/api/v1/health", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # 307 to /first_install: up, not yet set up
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"LNbits did not answer within {LNBITS_START}s")

    def call(self, method: str, path: str, body=None, key=None):
        headers = {"Content-Type": "application/json"}
        if key:
            headers["X-Api-Key"] = key
        if body is not None and path.startswith("/users/"):
            headers["Authorization"] = "Bearer " + self.token
        request = urllib.request.Request(self.base + path, method=method, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def wallet(self, name: str, sats: int = 0) -> dict:
        status, wallet = self.call("POST", "/api/v1/account", {"name": name})
        assert status == 200, (status, wallet)
        if sats:
            status, body = self.call("PUT", "/users/api/v1/balance", {"id": wallet["id"], "amount": sats})
            assert status == 200, (status, body)
        return wallet

    def stop(self):
        # uvicorn was started in its own session: stop the whole group.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        terminate(self.proc, 10)
        self.log.close()


@pytest.fixture
def lnbits(tmp_path):
    python = os.environ.get("LNBITS_PYTHON")
    if not python or not Path(python).exists():
        pytest.fail("LNBITS_PYTHON is not set to LNbits' Python (make test sets it up)", pytrace=False)
    data = Path(tempfile.mkdtemp(prefix="lnbits-", dir=tmp_path))
    server = LNbits(python, data)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("relay_url", ["rust", "nostr_relay"], indirect=True)
def test_rust_nostr_through_wallet_bridge_on_lnbits(procs, aio, tmp_path, lnbits, monkeypatch, relay_url):  # noqa: F811
    bridge_wallet = lnbits.wallet("bridge", sats=10_000)
    outsider = lnbits.wallet("outsider", sats=5_000)
    data = tmp_path / "wallet"
    monkeypatch.setitem(test_pool_interop.ENV, "INTEROP_LNBITS_KEY", bridge_wallet["adminkey"])
    running = []

    def start_bridge():
        proc = procs.start(
            [wb_path(procs), "serve", "--data-dir", str(data), "--relay", relay_url, "--backend", "lnbits",
             "--lnbits-url", lnbits.base, "--lnbits-key-env", "INTEROP_LNBITS_KEY"], "wallet-bridge")
        proc.wait_for(lambda lines: next((l for l in lines if l.startswith("wallet-bridge ready")), None), READY, "the ready line")
        running.append(proc)

    def stop_bridge():
        proc = running.pop()
        was_alive, exited = proc.stop()
        proc.stopped_by_test = True
        assert was_alive and exited, proc.describe()

    start_bridge()
    _, spender_uri = connect(procs, data, "spender", "--budget", "8000000", "--period", "weekly")
    _, shop_uri = connect(procs, data, "shop", "--unlimited")

    async def session():
        await wait_for_info(relay_url, spender_uri)
        await wait_for_info(relay_url, shop_uri)
        spender, shop = nwc(spender_uri), nwc(shop_uri)
        assert (await spender.get_balance()).balance == 10_000_000
        # Before this bridge made an invoice: what LNbits cannot tell is left out, never made up.
        early = await shop.get_info()
        assert early.block_height is None and early.block_hash is None, str(early)
        assert early.pubkey is None or len(early.pubkey) == 66, str(early)

        made = await shop.make_invoice(MakeInvoiceRequest(amount=5_000_000, description="lnbits coffee", description_hash=None, expiry=None))
        decoded = bolt11.decode(made.invoice)
        assert decoded.amount_msat == 5_000_000 and decoded.payment_hash == made.payment_hash, decoded.data
        ours = json.loads(subprocess.run([procs.sb, "bolt11", made.invoice], capture_output=True, check=True, timeout=30).stdout)
        assert ours["payee"] == decoded.payee and ours["payment_hash"] == decoded.payment_hash, ours
        info = await shop.get_info()
        assert info.pubkey == decoded.payee, str(info)

        # From one connection to the other: an internal LNbits payment, settled at once, fee 0.
        paid = await spender.pay_invoice(PayInvoiceRequest(id=None, invoice=made.invoice, amount=None))
        assert hashlib.sha256(bytes.fromhex(paid.preimage)).hexdigest() == made.payment_hash
        settled = await shop.lookup_invoice(LookupInvoiceRequest(payment_hash=made.payment_hash, invoice=None))
        assert settled.state == TransactionState.SETTLED and settled.transaction_type == TransactionType.INCOMING
        sent = await spender.lookup_invoice(LookupInvoiceRequest(payment_hash=made.payment_hash, invoice=None))
        assert sent.state == TransactionState.SETTLED and sent.transaction_type == TransactionType.OUTGOING
        assert (await spender.get_balance()).balance == 10_000_000  # one LNbits wallet: paid to itself

        # The budget (8,000 sat a week) counts the 5,000 paid: 4,000 more is refused before LNbits sees it.
        second = await shop.make_invoice(MakeInvoiceRequest(amount=4_000_000, description=None, description_hash=None, expiry=None))
        with pytest.raises(Exception) as refused:
            await spender.pay_invoice(PayInvoiceRequest(id=None, invoice=second.invoice, amount=None))
        assert "[QuotaExceeded]" in error_text(refused), error_text(refused)
        # 2,950 sat fits the 3,000 left with a 1 % fee reserve, not with LNbits' 2 %: the reserve is LNbits' own.
        third = await shop.make_invoice(MakeInvoiceRequest(amount=2_950_000, description=None, description_hash=None, expiry=None))
        with pytest.raises(Exception) as reserved:
            await spender.pay_invoice(PayInvoiceRequest(id=None, invoice=third.invoice, amount=None))
        assert "[QuotaExceeded]" in error_text(reserved), error_text(reserved)

        # Someone else pays the shop's invoice through LNbits: the shop is notified, and its lookup says settled.
        notes = Notifications(shop_uri)
        await notes.start()
        status, body = lnbits.call("POST", "/api/v1/payments", {"out": True, "bolt11": second.invoice}, key=outsider["adminkey"])
        assert status in (200, 201), (status, body)
        received = await notes.collect(2, timeout=15, payment_hash=second.payment_hash)
        await notes.stop()
        assert sorted(kind for kind, _ in received) == [23196, 23197], received
        assert all(note["notification"]["payment_hash"] == second.payment_hash for _, note in received), received
        looked = await shop.lookup_invoice(LookupInvoiceRequest(payment_hash=second.payment_hash, invoice=None))
        assert looked.state == TransactionState.SETTLED
        assert (await shop.get_balance()).balance == 14_000_000

        history = await spender.list_transactions(ListTransactionsRequest(
            _from=None, until=None, limit=None, offset=None, unpaid=None, transaction_type=TransactionType.OUTGOING))
        assert [t.payment_hash for t in history] == [made.payment_hash]

        # More than the LNbits wallet holds, by a connection with no budget: LNbits refuses it, and the client gets
        # NIP-47's INSUFFICIENT_BALANCE, not a generic payment failure.
        status, big = lnbits.call("POST", "/api/v1/payments", {"out": False, "amount": 100_000, "memo": "too big"},
                                  key=outsider["adminkey"])
        assert status in (200, 201), (status, big)
        with pytest.raises(Exception) as short:
            await shop.pay_invoice(PayInvoiceRequest(id=None, invoice=big.get("bolt11") or big["payment_request"], amount=None))
        assert "[InsufficientBalance]" in error_text(short), error_text(short)
        assert (await shop.get_balance()).balance == 14_000_000

        # Paid while the bridge was down, just before the invoice expired: the restarted bridge still finds it
        # and reports it settled, not expired.
        brief = await shop.make_invoice(MakeInvoiceRequest(amount=1_000_000, description="brief", description_hash=None, expiry=4))
        # In threads: this loop also runs rust-nostr's relay, which must keep serving meanwhile.
        await asyncio.to_thread(stop_bridge)
        status, body = lnbits.call("POST", "/api/v1/payments", {"out": True, "bolt11": brief.invoice}, key=outsider["adminkey"])
        assert status in (200, 201), (status, body)
        await asyncio.sleep(5)  # expired now
        await asyncio.to_thread(start_bridge)
        deadline = time.monotonic() + 20
        while True:
            looked = await shop.lookup_invoice(LookupInvoiceRequest(payment_hash=brief.payment_hash, invoice=None))
            if looked.state == TransactionState.SETTLED or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert looked.state == TransactionState.SETTLED, looked.state
        # The restarted bridge has made no invoice yet: the node is that of the wallet's latest invoice in LNbits.
        assert (await shop.get_info()).pubkey == decoded.payee
        for client in (spender, shop):
            await client.client().shutdown()

    aio.call(session(), timeout=150)


def test_a_payment_in_flight_at_sigterm_is_answered_before_the_bridge_exits(procs, aio, tmp_path, lnbits, monkeypatch):  # noqa: F811
    """With the operations listener on (--http), SIGTERM gives a pay_invoice in flight the grace period. LNbits is
    held (SIGSTOP) while the payment waits on it: `/metrics` shows the handler running and `/health` says 503. Once
    LNbits goes on, the preimage reaches rust-nostr's client before the bridge exits 0, with no error logged."""
    relay_url = start_rust_relay(aio).url
    bridge_wallet = lnbits.wallet("bridge", sats=10_000)
    payee = lnbits.wallet("payee")
    monkeypatch.setitem(test_pool_interop.ENV, "INTEROP_LNBITS_KEY", bridge_wallet["adminkey"])
    data = tmp_path / "wallet"
    proc = serve(procs, data, relay_url, "--backend", "lnbits", "--lnbits-url", lnbits.base,
                 "--lnbits-key-env", "INTEROP_LNBITS_KEY", "--http", "127.0.0.1:0")
    base = "http://" + next(l for l in proc.snapshot() if l.startswith("http ")).split()[1]
    _, uri = connect(procs, data, "spender", "--unlimited")
    status, invoice = lnbits.call("POST", "/api/v1/payments", {"out": False, "amount": 1_000, "memo": "at sigterm"},
                                  key=payee["adminkey"])
    assert status in (200, 201), (status, invoice)
    bolt = invoice.get("bolt11") or invoice["payment_request"]

    def handlers_running() -> bool:
        """Polls /metrics until a NIP-47 request's handler is running; false if none is within 10 s."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with urllib.request.urlopen(base + "/metrics", timeout=5) as page:
                for line in page.read().decode().splitlines():
                    if line.startswith('switchboard_handlers_running{kind="23194"}') and float(line.split()[-1]) >= 1:
                        return True
            time.sleep(0.05)
        return False

    async def scenario():
        await wait_for_info(relay_url, uri)
        spender = nwc(uri)
        # In threads: this loop also runs rust-nostr's relay, which must keep serving meanwhile.
        os.killpg(lnbits.proc.pid, signal.SIGSTOP)
        try:
            paying = asyncio.ensure_future(spender.pay_invoice(PayInvoiceRequest(id=None, invoice=bolt, amount=None)))
            running = await asyncio.to_thread(handlers_running)
            if running:
                proc.stopped_by_test = True
                proc.proc.send_signal(signal.SIGTERM)
            drained = running and await asyncio.to_thread(says_draining, base + "/health")
        finally:
            os.killpg(lnbits.proc.pid, signal.SIGCONT)
        assert running, f"no pay_invoice handler running\n{proc.describe()}"
        paid = await paying
        # The grace period is --payment-timeout + 5 s (65 s): well within it, but timed from LNbits' return.
        exit_code = await asyncio.to_thread(proc.proc.wait, 30)
        await spender.client().shutdown()
        return drained, paid, exit_code

    drained, paid, exit_code = aio.call(scenario(), timeout=90)
    assert drained, "/health did not say 503 while the payment drained"
    assert hashlib.sha256(bytes.fromhex(paid.preimage)).hexdigest() == bolt11.decode(bolt).payment_hash
    assert exit_code == 0, proc.describe()
    # A clean drain: nothing cut off, so nothing logged as an error (the old exit cut off the checkpoint's write).
    assert not proc.logged_errors(), proc.logged_errors()
    status, wallet = lnbits.call("GET", "/api/v1/wallet", key=payee["adminkey"])
    assert status == 200 and wallet["balance"] == 1_000_000, (status, wallet)
