#!/usr/bin/env bash
# A master, two replicas and a tantivy searchd beside each replica, on
# loopback. Publishes version 1, then a version 2 with one more document,
# and shows that every replica's searchd finds it after the swap.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/indexswarm
SEARCHD=target/release/examples/searchd
[ -x "$BIN" ] && [ -x "$SEARCHD" ] || { echo "build first: cargo build --release && cargo build --release --example searchd" >&2; exit 1; }

WORK=$(mktemp -d /tmp/indexswarm-search-XXXX)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; echo "logs and data in $WORK"; }
trap cleanup EXIT INT TERM

mkdir -p "$WORK/snapshots"
"$BIN" master --snapshots-dir "$WORK/snapshots" --http-listen 127.0.0.1:17070 \
    --peer-listen 127.0.0.1:16881 --settle-secs 1 2> "$WORK/master.log" & PIDS+=($!)
for i in 1 2; do
    "$SEARCHD" serve --index "$WORK/replica-$i/current" --listen "127.0.0.1:1808$i" 2> "$WORK/searchd-$i.log" & PIDS+=($!)
    "$BIN" replica --master-url http://127.0.0.1:17070 --data-dir "$WORK/replica-$i" \
        --http-listen "127.0.0.1:1707$i" --peer-listen "127.0.0.1:1689$i" --poll-interval-secs 1 \
        --on-swap "http://127.0.0.1:1808$i/reload" 2> "$WORK/replica-$i.log" & PIDS+=($!)
done

query() { curl -s "http://127.0.0.1:1808$1/search?q=zanzibar"; echo; }
wait_version() {
    for _ in $(seq 1 120); do
        v1=$(curl -s 127.0.0.1:17071/status | grep -o '"current_version": [0-9]*' | grep -o '[0-9]*$' || true)
        v2=$(curl -s 127.0.0.1:17072/status | grep -o '"current_version": [0-9]*' | grep -o '[0-9]*$' || true)
        [ "$v1" = "$1" ] && [ "$v2" = "$1" ] && return 0
        sleep 0.5
    done
    echo "replicas did not reach version $1" >&2; return 1
}

"$SEARCHD" build --docs 20000 --out "$WORK/snapshots/snapshot.20261124120000000" > /dev/null
wait_version 1
echo "version 1 on both replicas; searching for 'zanzibar':"; query 1; query 2

"$SEARCHD" build --from "$WORK/snapshots/snapshot.20261124120000000" \
    --add "zanzibar appears only in version two" --out "$WORK/snapshots/snapshot.20261124121500000" > /dev/null
wait_version 2
sleep 1
echo "version 2 on both replicas; searching again:"; query 1; query 2
curl -s 127.0.0.1:17071/status | grep -E '"bytes_(downloaded|reused)"'
echo "running; Ctrl-C to stop"
wait
