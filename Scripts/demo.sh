#!/usr/bin/env bash
# A short tour: the bunker (a NIP-46 remote signer) signing for an app over the embedded relay, then the
# switchboard command's keys, events and NIP-44. (The other services' tours join here as they land.)
set -euo pipefail
bin=${1:-.build/debug/switchboard}
bunker=$(dirname "$bin")/bunker
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

work=$(mktemp -d)
bunker_pid=""
cleanup() {
    if [ -n "$bunker_pid" ] && kill -0 "$bunker_pid" 2>/dev/null; then kill -KILL "$bunker_pid" 2>/dev/null || true; fi
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
