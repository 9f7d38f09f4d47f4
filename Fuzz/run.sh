#!/usr/bin/env bash
# Builds the libFuzzer targets (with AddressSanitizer) and runs each for N seconds (default 60),
# seeded from Fuzz/seeds/<target>. Prints libFuzzer's final line per target, with the exec count.
# Usage: Fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(FuzzNIP44 FuzzMessages FuzzRelaySession)

swift build -c release --scratch-path ../.build-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -use-ld=lld

for target in "${targets[@]}"; do
    corpus="corpus-$target"
    mkdir -p "$corpus"
    cp -n seeds/"$target"/* "$corpus"/ 2>/dev/null || true
    echo "== $target for ${seconds}s"
    ../.build-fuzz/release/"$target" "$corpus" -max_total_time="$seconds" -max_len=70000 -print_final_stats=1 \
        -rss_limit_mb=4096 2>&1 | tee "fuzz-$target.log" | grep -E '^(Done|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY)' || true
    if grep -qE 'ERROR|crash-|deadly signal' "fuzz-$target.log"; then
        echo "$target found a failure: see Fuzz/fuzz-$target.log"
        exit 1
    fi
done
