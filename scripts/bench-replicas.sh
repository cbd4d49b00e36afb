#!/usr/bin/env bash
# Cold reads (`GET /v1/users/{id}`, cache off) on the primary alone, then with one streaming
# replica answering them. Seeds a scratch database on PG_ADMIN_URL's server, makes a replica of
# that server (pg_basebackup through a replication slot, like the tests' replica but without the
# apply delay) on a free port, and runs wrk against one server per configuration. Everything it
# made (database, replica, slot) is removed on exit, whatever happens.
#
#   PG_ADMIN_URL   a server and a user allowed to create databases and replicate
#                  (default postgres://postgres:postgres@127.0.0.1:5432/postgres)
#   BIN            the service and seed binaries' directory (default target/release)
#   SECONDS_EACH   wrk duration per configuration (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."

PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}
BIN=${BIN:-target/release}
SECONDS_EACH=${SECONDS_EACH:-15}
PORT=${PORT:-18090}
BASE_URL=http://127.0.0.1:$PORT
export LUA_PATH='bench/lua/?.lua;;'

stamp=$(date -u +%Y%m%dT%H%M%SZ)
OUT=target/bench/replicas-$stamp
mkdir -p "$OUT"
db=storefront_bench_replicas_$$
slot=sf_bench_replica_$$
work=$(mktemp -d)
major=$(psql -tAX "$PG_ADMIN_URL" -c "SELECT current_setting('server_version_num')::int / 10000")
pgbin=/usr/lib/postgresql/$major/bin
replica_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SERVER_PID=

as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cleanup() {
  [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
  if [ -f "$work/data/postmaster.pid" ]; then
    kill -INT "$(head -n 1 "$work/data/postmaster.pid")" 2>/dev/null || true
    for _ in $(seq 1 20); do [ -f "$work/data/postmaster.pid" ] || break; sleep 0.5; done
  fi
  psql -qtAX "$PG_ADMIN_URL" -c "SELECT pg_drop_replication_slot('$slot')
    FROM pg_replication_slots WHERE slot_name = '$slot'" >/dev/null 2>&1 || true
  psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== seeding $db"
psql -q "$PG_ADMIN_URL" -c "CREATE DATABASE \"$db\""
url="${PG_ADMIN_URL%/*}/$db"
"$BIN/seed" --database-url "$url" --users 100000 --products 100 --orders 0 --out-dir "$OUT/ids" >"$OUT/seed.txt"

echo "== replica on port $replica_port"
[ "$(id -u)" != 0 ] || chown postgres "$work"
user=$(python3 -c 'import sys, urllib.parse as u; print(u.urlparse(sys.argv[1]).username or "postgres")' "$PG_ADMIN_URL")
password=$(python3 -c 'import sys, urllib.parse as u; print(u.urlparse(sys.argv[1]).password or "")' "$PG_ADMIN_URL")
PGPASSWORD=$password as_postgres env PGPASSWORD="$password" "$pgbin/pg_basebackup" -R -C -S "$slot" \
  -X stream -c fast -D "$work/data" -h 127.0.0.1 -p 5432 -U "$user"
settings=$(psql -tAX "$PG_ADMIN_URL" -c "SELECT string_agg(name || ' = ' || setting, E'\n')
  FROM pg_settings WHERE name IN ('max_connections', 'max_worker_processes', 'max_wal_senders',
  'max_prepared_transactions', 'max_locks_per_transaction')")
cat >"$work/data/postgresql.conf" <<CONF
port = $replica_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
hba_file = '$work/data/pg_hba.conf'
ident_file = '$work/data/pg_ident.conf'
hot_standby = on
shared_buffers = '128MB'
$settings
CONF
printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' >"$work/data/pg_hba.conf"
: >"$work/data/pg_ident.conf"
[ "$(id -u)" != 0 ] || chown -R postgres "$work"
as_postgres "$pgbin/postgres" -D "$work/data" >"$OUT/replica.log" 2>&1 &
until psql -qtAX "postgres://postgres@127.0.0.1:$replica_port/$db" -c 'SELECT 1' >/dev/null 2>&1; do sleep 0.2; done
replica_url="postgres://$user:$password@127.0.0.1:$replica_port/$db"

start_server() { # start_server NAME [VAR=VALUE...]
  local name=$1
  shift
  env DATABASE_URL="$url" HOST=127.0.0.1 PORT="$PORT" CACHE_TTL_SECS=0 \
    ADMIN_EMAIL=bench-admin@storefront.test ADMIN_PASSWORD=bench-admin-password "$@" \
    "$BIN/api" >"$OUT/server-$name.log" 2>&1 &
  SERVER_PID=$!
  until curl -fsS -o /dev/null "$BASE_URL/ready" 2>/dev/null; do sleep 0.1; done
  BENCH_TOKEN=$(curl -fsS -XPOST "$BASE_URL/v1/sessions" -H 'content-type: application/json' \
    -d '{"email":"bench-admin@storefront.test","password":"bench-admin-password"}' |
    sed 's/.*"token":"\([^"]*\)".*/\1/')
  export BENCH_TOKEN
}

stop_server() {
  curl -fsS "$BASE_URL/metrics" | grep -E '^db_reads_total|^db_replica' >"$OUT/metrics-$1.txt" || true
  kill "$SERVER_PID"
  wait "$SERVER_PID" || true
  SERVER_PID=
}

run() { # run NAME
  wrk -t2 -c32 -d3s --timeout 30s --latency -s bench/lua/get_user.lua "$BASE_URL" -- "$OUT/ids/users.txt" >"$OUT/wrk-$1-warmup.txt"
  wrk -t2 -c32 -d"${SECONDS_EACH}s" --timeout 30s --latency -s bench/lua/get_user.lua "$BASE_URL" -- "$OUT/ids/users.txt" >"$OUT/wrk-$1.txt"
  echo "$1: $(grep '^BENCH' "$OUT/wrk-$1.txt")"
}

echo "== load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
start_server primary
run primary
stop_server primary
start_server replica DATABASE_REPLICA_URLS="$replica_url"
run replica
stop_server replica
echo "== reads by source (replica run):"
cat "$OUT/metrics-replica.txt"

# Reads that must see a write: each presents the token of the write just before it, so it waits
# for a replica to replay that write (DB_REPLICA_WAIT_MS at most; then the primary answers).
start_server token DATABASE_REPLICA_URLS="$replica_url"
wrk -t2 -c32 -d"${SECONDS_EACH}s" --timeout 30s --latency -s bench/lua/write_then_read.lua \
  "$BASE_URL" -- "$OUT/ids/products.txt" >"$OUT/wrk-token.txt"
echo "token: $(grep '^BENCH' "$OUT/wrk-token.txt")"
curl -fsS "$BASE_URL/metrics" >"$OUT/metrics-token-full.txt"
stop_server token
python3 - "$OUT/metrics-token-full.txt" <<'PY'
import re, sys
buckets, count = [], 0
for line in open(sys.argv[1]):
    match = re.match(r'db_replica_wait_seconds_bucket\{le="([^"]+)"\} (\d+)', line)
    if match:
        buckets.append((float("inf") if match[1] == "+Inf" else float(match[1]), int(match[2])))
    elif line.startswith("db_replica_wait_seconds_count"):
        count = int(line.split()[1])
def quantile(q):
    for bound, seen in buckets:
        if seen >= q * count:
            return bound
print(f"token waits: {count}; p50 <= {quantile(0.5) * 1000:g} ms; p99 <= {quantile(0.99) * 1000:g} ms (histogram bucket bounds)")
reads = dict(re.findall(r'db_reads_total\{source="(\w+)"\} (\d+)', open(sys.argv[1]).read()))
print(f"reads with a token answered by: replica {reads.get('replica', '0')}, primary {reads.get('primary', '0')}")
PY
echo "== raw output in $OUT"
