"""dvm-host (NIP-90 job host) against a client no one here wrote: rust-nostr's `Client`
(nostr-sdk 0.45.1) publishes job requests and reads feedback (7000) and results (6xxx)
through rust-nostr's LocalRelay and the Python `nostr_relay`: plain, encrypted (NIP-44 and
NIP-04), chained, url inputs, a failing command, a timeout, a job cancelled by a kind 5
deletion, a job whose worker was killed mid-way (run again after the restart), and a priced
job paid through wallet-bridge's ledger with rust-nostr's NostrWalletConnect; then two
dvm-host workers on one key sharing PostgreSQL take 500 jobs.

rust-nostr 0.45.1 has no NIP-90 builders any more (removed upstream), so requests are
built as plain events: `["i", data, type, relay]`, `["param", name, value]`, and for
encrypted requests the tags as a JSON array in the content, encrypted to the host, next to
`["p", host]` and `["encrypted"]`.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import bolt11
import pytest
from nostr_sdk import (
    EventBuilder,
    Filter,
    Kind,
    Nip44Version,
    PayInvoiceRequest,
    PublicKey,
    RelayUrl,
    ReqTarget,
    SingleThreadPow,
    Tag,
    nip04_decrypt,
    nip04_encrypt,
    nip44_decrypt,
    nip44_encrypt,
)

from conftest import SEED
from test_pool_interop import ENV, Procs, aio, procs, says_draining, start_rust_relay  # noqa: F401  (fixtures)
from test_relay_interop import hexid, new_keys, nostr_client, publish
from test_wallet_interop import connect as wallet_connect, nwc, serve as wallet_serve, wait_for_info, wb

READY = 30.0
STEP = 20.0
REPO = Path(__file__).resolve().parent.parent


def host(procs: Procs, data: Path, relay_url: str, *args):
    proc = procs.start([procs.binary("dvm-host"), "serve", "--data-dir", str(data), "--relay", relay_url, *args], "dvm-host")
    line = proc.wait_for(lambda lines: next((l for l in lines if l.startswith("dvm-host ready")), None), READY, "the ready line")
    return proc, line.split("(")[1].split(")")[0]


def job_event(keys, kind: int, tags: list, host_hex: str | None = None, scheme: str | None = None):
    clear = [["p", host_hex]] if host_hex else []
    content = ""
    if scheme:
        hidden = json.dumps(tags)
        pk = PublicKey.parse(host_hex)
        content = (nip44_encrypt(keys.secret_key(), pk, hidden, Nip44Version.V2) if scheme == "nip44"
                   else nip04_encrypt(keys.secret_key(), pk, hidden))
        clear.append(["encrypted"])
    else:
        clear += tags
    builder = EventBuilder(Kind(kind), content).tags([Tag.parse(t) for t in clear])
    return keys.sign_event(builder.finalize_unsigned(keys.public_key()))


def tags_of(event) -> list:
    tags = event.tags()
    return [t.to_vec() for t in (tags if isinstance(tags, list) else tags.to_vec())]


def read(keys, event) -> tuple[list, str]:
    """An answer's tags (hidden ones merged in, for encrypted feedback) and its content, decrypted."""
    tags, content = tags_of(event), event.content()
    if ["encrypted"] in tags:
        decrypt = nip04_decrypt if "?iv=" in content else nip44_decrypt
        content = decrypt(keys.secret_key(), event.author(), content)
        if event.kind().as_u16() == 7000:
            tags += json.loads(content)
            content = next((t[1] for t in tags if t[0] == "content"), "")
    return tags, content


async def run_job(urls, keys, event, on_feedback=None, timeout=STEP):
    """Publishes `event` and follows its answers: returns (feedback statuses, result event or None,
    result content, error reason or None)."""
    kind = event.kind().as_u16()
    async with nostr_client(urls[0]) as client:
        for url in urls[1:]:
            await client.add_relay(RelayUrl.parse(url))
        await client.connect(timedelta(seconds=STEP))
        stream = client.notifications()
        sub = await client.subscribe(ReqTarget.auto([Filter().kinds([Kind(7000), Kind(kind + 1000)]).event(event.id())]))
        out = await publish(client, event)
        assert out.success, f"[seed {SEED}] publish failed: {out.failed}"
        statuses, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                note = await asyncio.wait_for(stream.next(), max(0.05, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if not (note.is_new_event() and note.subscription_id == sub.id):
                continue
            answer = note.event
            tags, content = read(keys, answer)
            if answer.kind().as_u16() == 7000:
                status = next(t for t in tags if t[0] == "status")
                statuses.append(status[1])
                if on_feedback:
                    await on_feedback(tags)
                if status[1] == "error":
                    return statuses, None, None, status[2] if len(status) > 2 else ""
            else:
                return statuses, answer, content, None
        return statuses, None, None, f"no result within {timeout}s"


@pytest.fixture
def relay_url(request, procs, aio):  # noqa: F811
    if request.param == "rust":
        return start_rust_relay(aio).url
    return procs.nostr_relay().url


@pytest.mark.parametrize("relay_url", ["rust", "nostr_relay"], indirect=True)
def test_plain_and_encrypted_jobs_with_a_swift_handler(procs, aio, rng, tmp_path, relay_url):  # noqa: F811
    _, host_hex = host(procs, tmp_path / "dvm", relay_url, "--kind", "5050", "--handler", "uppercase", "--name", "Shouter")
    keys = new_keys(rng)

    plain = job_event(keys, 5050, [["i", "hello dvm", "text"], ["param", "lang", "en"], ["output", "text/plain"]])
    statuses, result, content, error = aio.call(run_job([relay_url], keys, plain), STEP * 2)
    assert error is None and content == "HELLO DVM", f"[seed {SEED}] {statuses} {error}"
    tags = tags_of(result)
    assert result.author().to_hex() == host_hex and result.kind().as_u16() == 6050
    assert ["e", hexid(plain)] == tags[1][:2] or any(t[:2] == ["e", hexid(plain)] for t in tags), tags
    assert any(t[0] == "request" and json.loads(t[1])["id"] == hexid(plain) for t in tags), tags
    assert ["p", keys.public_key().to_hex()] in tags and ["i", "hello dvm", "text"] in tags, tags
    assert statuses == ["processing"], statuses

    for scheme in ("nip44", "nip04"):
        secret = job_event(keys, 5050, [["i", f"secret {scheme}", "text"]], host_hex, scheme)
        statuses, result, content, error = aio.call(run_job([relay_url], keys, secret), STEP * 2)
        assert error is None and content == f"SECRET {scheme.upper()}", f"[seed {SEED}] {scheme}: {statuses} {error}"
        tags = tags_of(result)
        assert ["encrypted"] in tags and not any(t[0] == "i" for t in tags), tags
        assert ("?iv=" in result.content()) == (scheme == "nip04")
        assert statuses == ["processing"], statuses

    # Targeted at someone else: ignored (no answer at all).
    elsewhere = job_event(keys, 5050, [["i", "not for you", "text"]], new_keys(rng).public_key().to_hex())
    statuses, result, _, error = aio.call(run_job([relay_url], keys, elsewhere, timeout=2), STEP)
    assert statuses == [] and result is None, statuses

    # The NIP-89 announcement.
    async def announcement():
        async with nostr_client(relay_url) as client:
            await client.connect(timedelta(seconds=STEP))
            events = await client.fetch_events(ReqTarget.auto([Filter().author(PublicKey.parse(host_hex)).kind(Kind(31990))]), timedelta(seconds=5))
            return events if isinstance(events, list) else events.to_vec()
    found = aio.call(announcement(), STEP)
    assert len(found) == 1, found
    tags = tags_of(found[0])
    assert ["k", "5050"] in tags and any(t[0] == "expiration" and int(t[1]) > time.time() + 3600 for t in tags), tags
    assert json.loads(found[0].content())["name"] == "Shouter"


@pytest.mark.parametrize("relay_url", ["rust", "nostr_relay"], indirect=True)
def test_ping_pong_and_heartbeat(procs, aio, rng, tmp_path, relay_url):  # noqa: F811
    """rust-nostr's Client pings the host (kind 7007) and gets a 7000 `pong` that e-tags the ping; the host's
    heartbeat (kind 11998) names its kinds and expires."""
    _, host_hex = host(procs, tmp_path / "dvm", relay_url, "--kind", "5050", "--kind", "5051", "--handler", "uppercase")
    keys = new_keys(rng)
    ping = keys.sign_event(EventBuilder(Kind(7007), "").tags([Tag.parse(["p", host_hex])]).finalize_unsigned(keys.public_key()))
    statuses, _, _, _ = aio.call(run_job([relay_url], keys, ping, timeout=5), STEP)
    assert statuses[:1] == ["pong"], f"[seed {SEED}] {statuses}"

    async def heartbeat():
        async with nostr_client(relay_url) as client:
            await client.connect(timedelta(seconds=STEP))
            found = await client.fetch_events(
                ReqTarget.auto([Filter().author(PublicKey.parse(host_hex)).kind(Kind(11998))]), timedelta(seconds=5))
            return found if isinstance(found, list) else found.to_vec()
    beats = aio.call(heartbeat(), STEP)
    assert len(beats) == 1, beats
    tags = tags_of(beats[0])
    assert ["k", "5050"] in tags and ["k", "5051"] in tags and ["status", "online"] in tags, tags
    assert any(t[0] == "expiration" and int(t[1]) > time.time() for t in tags), tags


def test_proof_of_work_and_a_denied_customer(procs, aio, rng, tmp_path):  # noqa: F811
    """`--min-pow 8 --deny KEY`: a request without NIP-13 work is ignored; the same request mined to 8 bits by
    rust-nostr's miner is run; a denied customer's mined request is ignored."""
    relay_url = start_rust_relay(aio).url
    denied = new_keys(rng)
    host(procs, tmp_path / "dvm", relay_url, "--kind", "5050", "--handler", "uppercase",
         "--min-pow", "8", "--deny", denied.public_key().to_bech32())

    def mined(keys, text):
        unsigned = EventBuilder(Kind(5050), "").tags([Tag.parse(["i", text, "text"])]).finalize_unsigned(keys.public_key())
        event = keys.sign_event(unsigned.mine(SingleThreadPow(), 8))
        assert int(event.id().to_hex()[:2], 16) == 0, event.id().to_hex()
        return event

    keys = new_keys(rng)
    lazy = job_event(keys, 5050, [["i", "no work done", "text"]])
    statuses, result, _, _ = aio.call(run_job([relay_url], keys, lazy, timeout=2), STEP)
    assert statuses == [] and result is None, f"[seed {SEED}] {statuses}"
    statuses, result, content, error = aio.call(run_job([relay_url], keys, mined(keys, "work done")), STEP * 2)
    assert error is None and content == "WORK DONE", f"[seed {SEED}] {statuses} {error}"
    statuses, result, _, _ = aio.call(run_job([relay_url], denied, mined(denied, "denied"), timeout=2), STEP)
    assert statuses == [] and result is None, f"[seed {SEED}] {statuses}"


class Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.parametrize("relay_url", ["rust", "nostr_relay"], indirect=True)
def test_exec_handler_url_chained_failing_and_timeout(procs, aio, rng, tmp_path, relay_url):  # noqa: F811
    site = tmp_path / "site"
    site.mkdir()
    (site / "words.txt").write_text("alpha beta gamma")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Files(*a, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        script = f"python3 {REPO / 'Examples' / 'dvm-exec' / 'reverse-words.py'}"
        _, host_hex = host(procs, tmp_path / "exec", relay_url, "--kind", "5050", "--exec", script, "--allow-private-urls")
        _, sleeper_hex = host(procs, tmp_path / "sleeper", relay_url, "--kind", "5051", "--exec", "sleep 30", "--timeout", "1")
        keys = new_keys(rng)

        url = f"http://127.0.0.1:{server.server_address[1]}/words.txt"
        fetched = job_event(keys, 5050, [["i", url, "url"]], host_hex)
        statuses, _, content, error = aio.call(run_job([relay_url], keys, fetched), STEP * 2)
        assert error is None and content.strip() == "gamma beta alpha", f"[seed {SEED}] {statuses} {error}"

        first = job_event(keys, 5050, [["i", "one two three", "text"]], host_hex)
        second = job_event(keys, 5050, [["i", hexid(first), "job", relay_url], ["param", "separator", "-"]], host_hex)

        async def chain():
            waiting = asyncio.ensure_future(run_job([relay_url], keys, second, timeout=STEP * 2))
            await asyncio.sleep(0.5)
            first_result = await run_job([relay_url], keys, first)
            return first_result, await waiting
        (_, _, first_content, _), (_, _, second_content, error) = aio.call(chain(), STEP * 3)
        assert first_content.strip() == "three two one"
        assert error is None and second_content.strip() == "one-two-three", f"[seed {SEED}] {error}"

        failing = job_event(keys, 5050, [], host_hex)
        statuses, result, _, error = aio.call(run_job([relay_url], keys, failing), STEP * 2)
        assert result is None and error == "the command exited with status 2: send at least one input with text", error
        assert statuses == ["processing", "error"], statuses

        slow = job_event(keys, 5051, [["i", "x", "text"]], sleeper_hex)
        started = time.monotonic()
        statuses, result, _, error = aio.call(run_job([relay_url], keys, slow), STEP * 2)
        assert result is None and error == "the job took longer than 1 s", error
        assert time.monotonic() - started < 10
    finally:
        server.shutdown()


@pytest.mark.parametrize("relay_url", ["rust", "nostr_relay"], indirect=True)
def test_a_kind_5_deletion_cancels_a_running_job(procs, aio, rng, tmp_path, relay_url):  # noqa: F811
    # rust-nostr 0.45.1 has no NIP-09 builder either: the deletion is a plain kind 5 event naming the job
    # (`e`) and its kind (`k`), as NIP-09 describes.
    _, host_hex = host(procs, tmp_path / "sleeper", relay_url, "--kind", "5052", "--exec", "sleep 30", "--timeout", "60")
    keys = new_keys(rng)
    job = job_event(keys, 5052, [["i", "x", "text"]], host_hex)

    async def cancel(tags):
        if next(t for t in tags if t[0] == "status")[1] != "processing":
            return
        deletion = keys.sign_event(EventBuilder(Kind(5), "changed my mind").tags(
            [Tag.parse(["e", hexid(job)]), Tag.parse(["k", "5052"])]).finalize_unsigned(keys.public_key()))
        async with nostr_client(relay_url) as client:
            await client.connect(timedelta(seconds=STEP))
            out = await publish(client, deletion)
            assert out.success, f"[seed {SEED}] the deletion was not accepted: {out.failed}"

    started = time.monotonic()
    statuses, result, _, error = aio.call(run_job([relay_url], keys, job, on_feedback=cancel), STEP * 2)
    assert result is None and error == "the customer cancelled the job (kind 5)", f"[seed {SEED}] {statuses} {error}"
    assert statuses == ["processing", "error"], statuses
    assert time.monotonic() - started < 15


def test_a_job_running_at_sigterm_is_answered_before_the_host_exits(procs, aio, rng, tmp_path):  # noqa: F811
    """With the operations listener on (--http), SIGTERM gives the job in flight the grace period: `/health` says
    503 meanwhile, and the result reaches the customer (rust-nostr's client) before the process exits 0."""
    relay_url = start_rust_relay(aio).url
    proc, host_hex = host(procs, tmp_path / "dvm", relay_url, "--kind", "5053", "--exec", "cat >/dev/null; sleep 2; echo finished",
                          "--timeout", "30", "--http", "127.0.0.1:0")
    health = "http://" + next(l for l in proc.snapshot() if l.startswith("http ")).split()[1] + "/health"
    with urllib.request.urlopen(health, timeout=10) as ready:
        assert ready.status == 200

    keys = new_keys(rng)
    job = job_event(keys, 5053, [["i", "x", "text"]], host_hex)

    async def scenario():
        stopping = []

        async def stop_when_processing(tags):
            if next(t for t in tags if t[0] == "status")[1] == "processing" and not stopping:
                # In threads: this loop also runs rust-nostr's relay, which must keep serving meanwhile.
                stopping.append(asyncio.ensure_future(asyncio.to_thread(proc.stop)))
                stopping.append(asyncio.ensure_future(asyncio.to_thread(says_draining, health)))

        outcome = await run_job([relay_url], keys, job, on_feedback=stop_when_processing)
        return outcome, [await part for part in stopping]

    (statuses, _, content, error), (stopped, drained) = aio.call(scenario(), STEP * 2)
    proc.stopped_by_test = True
    assert drained, "/health did not say 503 while the job drained"
    assert error is None and content.strip() == "finished", f"[seed {SEED}] {statuses} {error}\n{proc.describe()}"
    assert stopped == (True, True), proc.describe()
    assert proc.proc.returncode == 0, proc.describe()
    assert not proc.logged_errors(), proc.logged_errors()


class Processing(Exception):
    """The job's `processing` feedback arrived (ends run_job early)."""


@pytest.mark.parametrize("relay_url", ["rust", "nostr_relay"], indirect=True)
def test_a_job_whose_worker_was_killed_is_run_again_after_a_restart(procs, aio, rng, tmp_path, relay_url):  # noqa: F811
    starts = tmp_path / "starts.txt"
    script = f"read -r job; echo started >> {starts}; sleep 3; echo finished"
    data = tmp_path / "worker"
    args = ["--kind", "5053", "--exec", script, "--claim-lease", "3"]
    worker, host_hex = host(procs, data, relay_url, *args)
    keys = new_keys(rng)
    job = job_event(keys, 5053, [["i", "x", "text"]], host_hex)

    async def until_processing(tags):
        if next(t for t in tags if t[0] == "status")[1] == "processing":
            raise Processing()

    with pytest.raises(Processing):
        aio.call(run_job([relay_url], keys, job, on_feedback=until_processing), STEP * 2)
    # `processing` goes out as the command starts: wait for it to have started.
    deadline = time.monotonic() + STEP
    while not starts.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    # Killed mid-job: its claim stays in the journal, held by a process that no longer renews it, and the
    # job's files stay in the data directory.
    killed = worker.proc.pid
    worker.kill()
    assert starts.read_text().split() == ["started"]
    assert [p.name for p in (data / "jobs").iterdir() if p.name.startswith(f"dvm-job-{killed}-")], "the job's files"
    host(procs, data, relay_url, *args)
    # The restarted worker removed them before it was ready.
    assert not [p.name for p in (data / "jobs").iterdir() if p.name.startswith(f"dvm-job-{killed}-")]

    async def result():
        async with nostr_client(relay_url) as client:
            await client.connect(timedelta(seconds=STEP))
            stream = client.notifications()
            sub = await client.subscribe(ReqTarget.auto([Filter().kind(Kind(6053)).event(job.id())]))
            deadline = time.monotonic() + STEP
            while time.monotonic() < deadline:
                try:
                    note = await asyncio.wait_for(stream.next(), max(0.05, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                if note.is_new_event() and note.subscription_id == sub.id:
                    return note.event
        return None
    # The restarted worker's catch-up brings the job back; the dead process's claim lapses after 3 s
    # and the job (which may run twice) runs again.
    answer = aio.call(result(), STEP * 2)
    assert answer is not None, f"[seed {SEED}] no result after the restart"
    assert answer.content().strip() == "finished"
    assert starts.read_text().split() == ["started", "started"]


@pytest.mark.parametrize("relay_url", ["rust", "nostr_relay"], indirect=True)
def test_priced_job_paid_through_wallet_bridge(procs, aio, rng, tmp_path, relay_url):  # noqa: F811
    wallet = tmp_path / "wallet"
    wallet_serve(procs, wallet, relay_url)
    _, host_uri = wallet_connect(procs, wallet, "dvm", "--methods", "make_invoice,lookup_invoice,notifications")
    _, customer_uri = wallet_connect(procs, wallet, "customer", "--methods", "pay_invoice,get_balance", "--budget", "100000")
    wb(procs, "ledger", "credit", "--data-dir", str(wallet), "customer", "100000")
    aio.call(wait_for_info(relay_url, customer_uri), STEP)
    # The wallet's secret in the environment, where `ps` does not show it.
    ENV["DVM_HOST_WALLET"] = host_uri
    try:
        _, host_hex = host(procs, tmp_path / "dvm", relay_url, "--kind", "5050", "--handler", "uppercase",
                           "--price-msats", "21000")
    finally:
        del ENV["DVM_HOST_WALLET"]
    keys = new_keys(rng)
    payer = nwc(customer_uri)
    invoices = []

    async def pay(tags):
        status = next(t for t in tags if t[0] == "status")[1]
        if status == "payment-required":
            amount = next(t for t in tags if t[0] == "amount")
            assert amount[1] == "21000", amount
            decoded = bolt11.decode(amount[2])
            assert decoded.amount_msat == 21_000, decoded.data
            invoices.append(amount[2])
            await payer.pay_invoice(PayInvoiceRequest(id=None, invoice=amount[2], amount=None))

    request = job_event(keys, 5050, [["i", "worth paying for", "text"], ["bid", "30000"]], host_hex)
    statuses, result, content, error = aio.call(run_job([relay_url], keys, request, on_feedback=pay, timeout=STEP * 2), STEP * 3)
    assert error is None and content == "WORTH PAYING FOR", f"[seed {SEED}] {statuses} {error}"
    assert statuses == ["payment-required", "processing"], statuses
    # Paid: the result does not suggest paying again.
    assert not [t for t in tags_of(result) if t[0] == "amount"], tags_of(result)
    assert aio.call(payer.get_balance(), STEP).balance == 79_000
    connections = wb(procs, "connections", "--data-dir", str(wallet))
    assert "ledger-balance=21000msat" in next(l for l in connections.splitlines() if " dvm " in l), connections


def test_two_workers_on_postgres_run_500_jobs_once(procs, aio, rng, tmp_path):  # noqa: F811
    postgres = os.environ.get("SWITCHBOARD_TEST_POSTGRES")
    assert postgres, "SWITCHBOARD_TEST_POSTGRES is not set: run through `make test` (Scripts/with-postgres.sh)"
    relay_url = start_rust_relay(aio, notes_per_minute=100_000).url
    key = new_keys(rng)
    ran = tmp_path / "ran.txt"
    # Each run appends the job id (characters 8–71 of the job JSON: {"id":"<64 hex>"...) to one file.
    record = f"read -r job; printf '%s\\n' \"$job\" | cut -c8-71 >> {ran}; echo done"
    for name in ("a", "b"):
        procs.run("dvm-host", "init", "--data-dir", str(tmp_path / name), "--import", key.secret_key().to_hex())
        host(procs, tmp_path / name, relay_url, "--kind", "5050", "--exec", record, "--postgres", postgres, "--concurrency", "8",
             "--client-rate", "10000", "--client-burst", "10000", "--client-concurrency", "10000")
    host_hex = key.public_key().to_hex()
    customer = new_keys(rng)
    requests = [job_event(customer, 5050, [["i", f"job {n}", "text"]], host_hex) for n in range(500)]

    async def go():
        results = {}
        async with nostr_client(relay_url) as client:
            await client.connect(timedelta(seconds=STEP))
            stream = client.notifications()
            sub = await client.subscribe(ReqTarget.auto([Filter().kind(Kind(6050)).pubkey(customer.public_key())]))
            for event in requests:
                await publish(client, event)
            deadline = time.monotonic() + 120
            while len(results) < 500 and time.monotonic() < deadline:
                try:
                    note = await asyncio.wait_for(stream.next(), max(0.05, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                if note.is_new_event() and note.subscription_id == sub.id:
                    request_id = next(t[1] for t in tags_of(note.event) if t[0] == "e")
                    results.setdefault(request_id, set()).add(hexid(note.event))
            await asyncio.sleep(1)
        return results
    results = aio.call(go(), 180)
    assert set(results) == {hexid(r) for r in requests}, f"[seed {SEED}] {len(results)} of 500 answered"
    assert all(len(ids) == 1 for ids in results.values()), [r for r, ids in results.items() if len(ids) > 1][:5]
    lines = ran.read_text().split()
    assert len(lines) == 500 and set(lines) == set(results), f"{len(lines)} runs, {len(set(lines))} distinct"
