#!/usr/bin/env bash
# Counts the CPU instructions the server spends on one cached `GET /v1/users/{id}`, with
# valgrind's callgrind: deterministic for a given binary and request, whatever else the machine
# is doing, so two builds can be compared exactly.
#
#   scripts/profile-warm-read.sh [BINARY] [REQUESTS]
#
# BINARY defaults to the release build (built when missing); REQUESTS to 1000. The server runs
# on a scratch SQLite file with the cache on and logs at info, as in production. Instrumentation
# is switched on only after 200 unmeasured requests, so start-up and the cache fill are not
# counted. The profile is left in target/profile/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
bin=${1:-$target/release/api}
requests=${2:-1000}
command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)" >&2; exit 2; }
[ -x "$bin" ] || cargo build --release -p api

work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$target/profile"
out="$target/profile/warm-read.$(date -u +%Y%m%dT%H%M%SZ).callgrind"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DATABASE_URL="sqlite://$work/profile.db?mode=rwc" PORT=$port RUST_LOG=info \
  ADMIN_EMAIL=admin@example.com ADMIN_PASSWORD=admin-password-1 \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "$bin" \
  >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 600); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.2
done

base="http://127.0.0.1:$port"
token=$(curl -fsS -XPOST "$base/v1/sessions" -H 'content-type: application/json' \
  -d '{"email":"admin@example.com","password":"admin-password-1"}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
user=$(curl -fsS -XPOST "$base/v1/users" -H "authorization: Bearer $token" \
  -H 'content-type: application/json' \
  -d '{"name":"Ada","email":"ada@example.com","password":"password-123"}' |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')

# One keep-alive connection, one request at a time: the count is per request, not per second.
read_users() {
  python3 - "$port" "$1" "/v1/users/$user" "$token" <<'PY'
import http.client, sys
port, n, path, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
connection = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    connection.request("GET", path, headers={"authorization": "Bearer " + token})
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"status {response.status}")
PY
}
read_users 200
callgrind_control -i on "$server" >/dev/null
read_users "$requests"
callgrind_control -d "$server" >/dev/null
callgrind_control -i off "$server" >/dev/null

callgrind_annotate "$out.1" >"$work/annotated.txt"
total=$(awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }' "$work/annotated.txt")
echo "instructions per cached GET /v1/users/{id}: $((total / requests))  (profile: $out.1)"
