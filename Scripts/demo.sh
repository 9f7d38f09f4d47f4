#!/usr/bin/env bash
# A short tour of the switchboard command: keys, a signed event, NIP-44 between two people.
# (The services' tours join here as they land.)
set -euo pipefail
bin=${1:-.build/debug/switchboard}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

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
