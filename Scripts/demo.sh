#!/usr/bin/env bash
# A short tour: the bunker (a NIP-46 remote signer) signing for an app over the embedded relay, the
# wallet-bridge (a NIP-47 wallet service) with two connections paying each other on its ledger, then the
# dvm-host (a NIP-90 job host) taking plain, encrypted and failing jobs, then the switchboard command's keys,
# events and NIP-44.
set -euo pipefail
bin=${1:-.build/debug/switchboard}
bunker=$(dirname "$bin")/bunker
wallet=$(dirname "$bin")/wallet-bridge
dvm=$(dirname "$bin")/dvm-host
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

work=$(mktemp -d)
bunker_pid=""
wallet_pid=""
dvm_pid=""
cleanup() {
    for pid in "$bunker_pid" "$wallet_pid" "$dvm_pid"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    rm -rf "$work"
}
trap cleanup EXIT
export BUNKER_PASSPHRASE="demo passphrase (use your own)"

say "bunker: a key store with one user key (NIP-49, scrypt log_n 16)"
"$bunker" init --data-dir "$work/bunker"

say "bunker serve: no --relay, so it starts the embedded relay (development mode)"
"$bunker" serve --data-dir "$work/bunker" >"$work/serve.out" 2>"$work/serve.err" &
bunker_pid=$!
uri=""
for _ in $(seq 1 150); do
    uri=$(grep -m1 '^bunker://' "$work/serve.out" || true)
    [ -n "$uri" ] && break
    kill -0 "$bunker_pid" 2>/dev/null || { cat "$work/serve.err"; exit 1; }
    sleep 0.2
done
[ -n "$uri" ] || { echo "bunker serve printed no bunker:// URI"; cat "$work/serve.err"; exit 1; }
cat "$work/serve.out"

say "An app connects with that URI (switchboard nip46, the library's NIP-46 client) and has a note signed"
printf 'user key: '
"$bin" nip46 --key-file "$work/app.key" "$uri" get_public_key
note=$("$bin" nip46 --key-file "$work/app.key" "$uri" sign_event '{"kind":1,"content":"signed by my bunker"}')
echo "$note"
"$bin" event verify <<<"$note"

say "The operator's view: connected clients and the audit log (no content in it)"
"$bunker" clients --data-dir "$work/bunker"
"$bunker" audit --data-dir "$work/bunker" --limit 3

say "SIGTERM: the bunker finishes what is in flight and stops"
kill -TERM "$bunker_pid"
for _ in $(seq 1 100); do kill -0 "$bunker_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$bunker_pid" 2>/dev/null; then echo "the bunker did not stop within 10 s"; exit 1; fi
wait "$bunker_pid" && echo "bunker stopped cleanly" || { echo "bunker exited with $?"; exit 1; }
bunker_pid=""

say "wallet-bridge serve: the built-in ledger (not a Lightning node), on its own embedded relay"
"$wallet" serve --data-dir "$work/wallet" >"$work/wallet.out" 2>"$work/wallet.err" &
wallet_pid=$!
for _ in $(seq 1 150); do
    grep -q '^wallet-bridge ready' "$work/wallet.out" && break
    kill -0 "$wallet_pid" 2>/dev/null || { cat "$work/wallet.err"; exit 1; }
    sleep 0.2
done
grep -q '^wallet-bridge ready' "$work/wallet.out" || { echo "wallet-bridge printed no ready line"; cat "$work/wallet.err"; exit 1; }
cat "$work/wallet.out"

say "Two connections (while it runs): a tipping app with a budget of 50 sat a day, and a shop that can only receive"
"$wallet" connect --data-dir "$work/wallet" --name tipper --budget 50000 --period daily | tee "$work/tipper"
"$wallet" connect --data-dir "$work/wallet" --name shop --methods make_invoice,lookup_invoice,get_balance,list_transactions,notifications | tee "$work/shop"
tipper=$(grep '^nostr+walletconnect://' "$work/tipper")
shop=$(grep '^nostr+walletconnect://' "$work/shop")
"$wallet" ledger credit --data-dir "$work/wallet" tipper 100000

say "The shop makes an invoice; the tipper pays it (switchboard nwc, the library's NIP-47 client)"
invoice=$(NWC_URI=$shop "$bin" nwc make_invoice '{"amount":21000,"description":"a coffee"}')
echo "$invoice"
bolt11=$(sed -n 's/.*"invoice":"\([^"]*\)".*/\1/p' <<<"$invoice")
"$bin" bolt11 "$bolt11"
NWC_URI=$tipper "$bin" nwc pay_invoice "{\"invoice\":\"$bolt11\"}"
printf 'tipper: '
NWC_URI=$tipper "$bin" nwc get_balance
printf 'shop:   '
NWC_URI=$shop "$bin" nwc get_balance
printf 'tipper budget: '
NWC_URI=$tipper "$bin" nwc get_budget

say "Paying it again (a client retrying after a lost answer) gets the same preimage back; nothing is paid twice"
NWC_URI=$tipper "$bin" nwc pay_invoice "{\"invoice\":\"$bolt11\"}"
printf 'tipper: '
NWC_URI=$tipper "$bin" nwc get_balance
"$wallet" connections --data-dir "$work/wallet"

say "SIGTERM: wallet-bridge stops"
kill -TERM "$wallet_pid"
for _ in $(seq 1 100); do kill -0 "$wallet_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$wallet_pid" 2>/dev/null; then echo "wallet-bridge did not stop within 10 s"; exit 1; fi
wait "$wallet_pid" && echo "wallet-bridge stopped cleanly" || { echo "wallet-bridge exited with $?"; exit 1; }
wallet_pid=""

say "dvm-host serve: NIP-90 jobs of kind 5050 with the compiled-in uppercase handler, on its own embedded relay"
"$dvm" serve --data-dir "$work/dvm" --kind 5050 --handler uppercase --name "Demo shouter" >"$work/dvm.out" 2>"$work/dvm.err" &
dvm_pid=$!
for _ in $(seq 1 150); do
    grep -q '^dvm-host ready' "$work/dvm.out" && break
    kill -0 "$dvm_pid" 2>/dev/null || { cat "$work/dvm.err"; exit 1; }
    sleep 0.2
done
grep -q '^dvm-host ready' "$work/dvm.out" || { echo "dvm-host printed no ready line"; cat "$work/dvm.err"; exit 1; }
cat "$work/dvm.out"
dvm_relay=$(grep -o 'ws://127.0.0.1:[0-9]*' "$work/dvm.out" | head -1)
dvm_key=$(sed -n 's/^dvm-host ready: [^ ]* (\([0-9a-f]*\)).*/\1/p' "$work/dvm.out")

say "A customer sends a job (switchboard dvm, the library's NIP-90 client): feedback on stderr, the result on stdout"
printf 'result: %s\n' "$("$bin" dvm --relay "$dvm_relay" --kind 5050 --input "text:hello from a customer" 2>&1 | tr '\n' ' ')"

say "The same, with the input encrypted to the host (NIP-44): the result comes back encrypted too"
printf 'result: %s\n' "$("$bin" dvm --relay "$dvm_relay" --kind 5050 --to "$dvm_key" --encrypt nip44 --input "text:a private job" 2>&1 | tr '\n' ' ')"

say "A job the handler cannot do gets an error feedback with the reason"
if "$bin" dvm --relay "$dvm_relay" --kind 5050 2>&1; then echo "unexpected: a result"; exit 1; fi

say "SIGTERM: dvm-host stops"
kill -TERM "$dvm_pid"
for _ in $(seq 1 150); do kill -0 "$dvm_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$dvm_pid" 2>/dev/null; then echo "dvm-host did not stop within 15 s"; exit 1; fi
wait "$dvm_pid" && echo "dvm-host stopped cleanly" || { echo "dvm-host exited with $?"; exit 1; }
dvm_pid=""

say "Alice and Bob generate keys"
alice=$("$bin" key generate)
bob=$("$bin" key generate)
alice_sec=$(awk '/^secret-hex/{print $2}' <<<"$alice")
alice_pub=$(awk '/^public-hex/{print $2}' <<<"$alice")
bob_sec=$(awk '/^secret-hex/{print $2}' <<<"$bob")
bob_pub=$(awk '/^public-hex/{print $2}' <<<"$bob")
echo "alice: $(awk '/^npub/{print $2}' <<<"$alice")"
echo "bob:   $(awk '/^npub/{print $2}' <<<"$bob")"

say "Alice signs a note that mentions Bob"
event=$(SWITCHBOARD_SECRET_KEY=$alice_sec "$bin" event sign --kind 1 --content "hello, Bob" --tag "[\"p\",\"$bob_pub\"]")
echo "$event"
"$bin" event verify <<<"$event"

say "Alice encrypts a message to Bob with NIP-44"
payload=$(SWITCHBOARD_SECRET_KEY=$alice_sec "$bin" encrypt --to "$bob_pub" "meet at the usual relay")
echo "payload: $payload"
printf 'Bob reads: '
SWITCHBOARD_SECRET_KEY=$bob_sec "$bin" decrypt --from "$alice_pub" "$payload"
echo

say "A tampered event is refused"
if "$bin" event verify <<<"${event/hello/HELLO}"; then echo "unexpected: accepted"; exit 1; fi
echo "done."
