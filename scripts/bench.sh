#!/usr/bin/env bash
# Measures the release build of the service against PostgreSQL's own limits and writes
# BENCHMARKS.md at the repository root.
#
#   scripts/bench.sh                      # everything: build, seed, measure, report (~30 min)
#   scripts/bench.sh --report DIR         # rewrite BENCHMARKS.md from a finished run's DIR
#   BENCH_ONLY=flash BENCH_FLASH_STOCK=N scripts/bench.sh
#                                         # the flash sale and its pgbench baselines only (~4 min)
#   BENCH_ONLY=reads scripts/bench.sh     # scenarios 1 and 2 and their baselines only (~16 min)
#   BENCH_ONLY=replica scripts/bench.sh   # scenario 8 (a streaming replica) only (~3 min)
#
# The shell starts and stops servers, seeds and runs the load; `target/release/report` (bench's
# report binary) turns the raw results it records in BENCH_OUT into BENCHMARKS.md, with the one
# table of targets that also decides here which runs get profiled.
#
# It builds the server and the bench tools (`cargo build --release -p api -p bench`), creates
# scratch databases on PG_ADMIN_URL's server (dropped again on exit, whatever happens), seeds
# them with `bench`'s seed binary, and for each scenario starts the release server against one of
# them, drives it with wrk (bench/lua/*.lua) for BENCH_DURATION seconds at BENCH_CONNECTIONS
# connections on BENCH_THREADS threads, and reads the server's peak RSS from /proc. Baselines
# come from the same run: pgbench (bench/pgbench/*.sql) for the database's own limit, /health for
# the server's. Raw output (wrk, pgbench, server logs, profiles) stays in BENCH_OUT.
#
# Environment (defaults in brackets):
#   PG_ADMIN_URL        a server and a user allowed to create databases
#                       [postgres://postgres@127.0.0.1:5432/postgres]
#   BENCH_DURATION      seconds per measured run [15]
#   BENCH_CONNECTIONS   concurrent connections, wrk and pgbench alike [32]
#   BENCH_THREADS       wrk threads and pgbench jobs [2]
#   BENCH_USERS, BENCH_PRODUCTS, BENCH_ORDERS
#                       the main data set, used by every scenario but the listings
#                       [100000, 1000, 100000]
#   BENCH_SMALL_USERS   users for the page-mode reference listing [10000]
#   BENCH_BIG_USERS     users for the large listings [1000000]
#   BENCH_DEEP          keyset depth of the deep cursor run [900000]
#   BENCH_HOT_PRODUCTS  products the contended order run and the flash sale draw from [10]
#   BENCH_CONNECTIONS_HIGH
#                       the second concurrency of the cached read against /health [64]
#   BENCH_FLASH_STOCK   units of each flash-sale product [sized from the hot-products order
#                       run's rate to sell out about halfway through a run; required with
#                       BENCH_ONLY=flash, which skips that run]
#   BENCH_ONLY          flash: only the flash sale (scenario 6) and its pgbench baselines, on the
#                       main data set; reads: only scenarios 1 and 2 and their baselines;
#                       replica: only scenario 8; the report goes to BENCH_OUT unless
#                       BENCH_REPORT says otherwise
#                       [unset: every scenario]
#   BENCH_MONGO         0: skip the MongoDB scenarios [1]
#   BENCH_MONGO_URL     a MongoDB server; the run creates and drops a scratch database on it
#                       [mongodb://127.0.0.1:27017/?directConnection=true]
#   BENCH_MONGO_USERS, BENCH_MONGO_PRODUCTS
#                       the MongoDB data set [20000, 1000]
#   BENCH_FEW_USERS     scenario 2 at -c32 also reads only this many users (as often each), so
#                       that the cost of reading many of them shows beside it [10]
#   BENCH_ROUNDS        rounds of scenarios 1 and 2, each a baseline run then the service's;
#                       a target's ratio is the median round's [7]
#   BENCH_WARMUP        seconds of unmeasured load before each measured run [3]
#   BENCH_PORT          the server's port [18080]
#   BENCH_PROFILE       1: record a perf profile for every missed target; all: also for the
#                       cached read (scenario 2), met or not [1]
#   BENCH_OUT           where raw output goes [target/bench/<UTC time>]
#   BENCH_REPORT        the report to write [BENCHMARKS.md]
#   RUST_LOG            passed to the server when set (the server's default is info)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DURATION=${BENCH_DURATION:-15}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-2}
USERS=${BENCH_USERS:-100000}
PRODUCTS=${BENCH_PRODUCTS:-1000}
ORDERS=${BENCH_ORDERS:-100000}
SMALL_USERS=${BENCH_SMALL_USERS:-10000}
BIG_USERS=${BENCH_BIG_USERS:-1000000}
DEEP=${BENCH_DEEP:-900000}
HOT_PRODUCTS=${BENCH_HOT_PRODUCTS:-10}
CONNECTIONS_HIGH=${BENCH_CONNECTIONS_HIGH:-64}
FLASH_STOCK=${BENCH_FLASH_STOCK:-}
ONLY=${BENCH_ONLY:-}
MONGO=${BENCH_MONGO:-1}
MONGO_URL=${BENCH_MONGO_URL:-mongodb://127.0.0.1:27017/?directConnection=true}
MONGO_USERS=${BENCH_MONGO_USERS:-20000}
MONGO_PRODUCTS=${BENCH_MONGO_PRODUCTS:-1000}
PORT=${BENCH_PORT:-18080}
PROFILE=${BENCH_PROFILE:-1}
PROFILE_SECONDS=8
WARMUP_SECONDS=${BENCH_WARMUP:-3}
ROUNDS=${BENCH_ROUNDS:-7}
FEW_USERS=${BENCH_FEW_USERS:-10}
REPORT=${BENCH_REPORT:-BENCHMARKS.md}
# Where cargo puts the release binaries (CARGO_TARGET_DIR when set); commands are shown as
# target/release/… either way.
BIN=$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)/release
BASE_URL="http://127.0.0.1:$PORT"
PER_PAGE=20
export LUA_PATH="$ROOT/bench/lua/?.lua;;"

# ---------------------------------------------------------------------------------------------
# Helpers

say() { printf '\n== %s\n' "$*" >&2; }
die() {
  printf 'bench: %s\n' "$*" >&2
  exit 1
}

# record KEY VALUE: keeps a figure for the report (results.env is sourced by --report).
record() {
  printf '%s=%q\n' "$1" "$2" >>"$OUT/results.env"
  printf -v "$1" '%s' "$2"
}

# note_cmd TEXT: one line of the "exact commands" section.
note_cmd() { printf '%s\n' "$*" >>"$OUT/commands.txt"; }

# calc EXPR: floating-point arithmetic through awk.
calc() { awk "BEGIN { printf \"%.2f\", $* }"; }

# A command line as text, paths relative to the repository.
show() {
  local out="" arg
  for arg in "$@"; do
    arg=${arg//$BIN\//target/release/}
    arg=${arg//$ROOT\//}
    [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]] || arg=$(printf '%q' "$arg")
    out+="${out:+ }$arg"
  done
  printf '%s' "$out"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---------------------------------------------------------------------------------------------
# The report: target/release/report renders it from the run's raw results (results.env, the
# commands, profiles and plans in OUT); its table of targets also decides what gets profiled.

write_report() {
  # A no-op when the binary is current; --report on its own may follow an edit of the table.
  # The same packages as the run's build: on its own, bench would unify other features and
  # rebuild the server.
  cargo build --release -p api -p bench >&2
  "$BIN/report" --out "$OUT" --root "$ROOT" --report "$REPORT"
}

# target_missed ID: true when the report's target ID was measured and missed (profile it).
target_missed() { "$BIN/report" --out "$OUT" --missed "$1"; }
# profile_wanted ID: the target was missed, or BENCH_PROFILE=all asks for its profile anyway.
profile_wanted() { [ "$PROFILE" = all ] || target_missed "$1"; }

if [ "${1:-}" = "--report" ]; then
  [ -n "${2:-}" ] && [ -f "$2/results.env" ] || die "usage: scripts/bench.sh --report DIR (a finished run)"
  OUT=$(cd "$2" && pwd)
  write_report
  exit 0
fi
[ $# -eq 0 ] || die "usage: scripts/bench.sh [--report DIR]"

# ---------------------------------------------------------------------------------------------
# Setup and teardown

OUT=${BENCH_OUT:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
case "$ONLY" in
  "") ;;
  flash)
    [ -n "$FLASH_STOCK" ] || die "BENCH_ONLY=flash needs BENCH_FLASH_STOCK (units per product)"
    # A partial run must not replace the full report.
    REPORT=${BENCH_REPORT:-$OUT/BENCHMARKS.md}
    ;;
  reads | replica) REPORT=${BENCH_REPORT:-$OUT/BENCHMARKS.md} ;;
  *) die "BENCH_ONLY must be unset, flash, reads or replica, not $ONLY" ;;
esac
: >"$OUT/results.env"
: >"$OUT/commands.txt"

SERVER_PID=""
SERVER_DB=""
PG_LOCAL=0
BACKGROUND_PIDS=()
DATABASES=()
MONGO_DROP_URL=""
RUN_ID="$(date +%s)_$$"

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local waited=0
    while kill -0 "$SERVER_PID" 2>/dev/null && [ $waited -lt 350 ]; do
      sleep 0.1
      waited=$((waited + 1))
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_server
  local pid
  for pid in "${BACKGROUND_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  stop_replica
  local db
  for db in "${DATABASES[@]}"; do
    psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 ||
      echo "bench: could not drop scratch database $db" >&2
  done
  if [ -n "$MONGO_DROP_URL" ]; then
    "$BIN/mongobench" drop --url "$MONGO_DROP_URL" >/dev/null 2>&1 ||
      echo "bench: could not drop the scratch MongoDB database" >&2
  fi
  [ $status -eq 0 ] || echo "bench: failed (status $status); raw output in $OUT" >&2
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A streaming replica of PG_ADMIN_URL's server (pg_basebackup through a replication slot, no
# apply delay) on a free port of this machine, for scenario 8; removed with its slot on exit.
REPLICA_DIR=""
REPLICA_SLOT=""
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
start_replica() {
  local major pgbin user password settings
  major=$(psql -tAX "$PG_ADMIN_URL" -c "SELECT current_setting('server_version_num')::int / 10000")
  pgbin=/usr/lib/postgresql/$major/bin
  REPLICA_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  REPLICA_DIR=$(mktemp -d)
  REPLICA_SLOT=sf_bench_replica_$$
  [ "$(id -u)" != 0 ] || chown postgres "$REPLICA_DIR"
  user=$(python3 -c 'import sys, urllib.parse as u; print(u.urlparse(sys.argv[1]).username or "postgres")' "$PG_ADMIN_URL")
  password=$(python3 -c 'import sys, urllib.parse as u; print(u.urlparse(sys.argv[1]).password or "")' "$PG_ADMIN_URL")
  note_cmd "pg_basebackup -R -C -S $REPLICA_SLOT -X stream -c fast -D \$REPLICA_DIR/data -h 127.0.0.1 -p 5432 -U $user"
  as_postgres env PGPASSWORD="$password" "$pgbin/pg_basebackup" -R -C -S "$REPLICA_SLOT" \
    -X stream -c fast -D "$REPLICA_DIR/data" -h 127.0.0.1 -p 5432 -U "$user" >"$OUT/replica-basebackup.log" 2>&1 ||
    { cat "$OUT/replica-basebackup.log" >&2; die "pg_basebackup failed"; }
  settings=$(psql -tAX "$PG_ADMIN_URL" -c "SELECT string_agg(name || ' = ' || setting, E'\n')
    FROM pg_settings WHERE name IN ('max_connections', 'max_worker_processes', 'max_wal_senders',
    'max_prepared_transactions', 'max_locks_per_transaction', 'shared_buffers')")
  cat >"$REPLICA_DIR/data/postgresql.conf" <<CONF
port = $REPLICA_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$REPLICA_DIR'
hba_file = '$REPLICA_DIR/data/pg_hba.conf'
ident_file = '$REPLICA_DIR/data/pg_ident.conf'
hot_standby = on
$settings
CONF
  printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' >"$REPLICA_DIR/data/pg_hba.conf"
  : >"$REPLICA_DIR/data/pg_ident.conf"
  [ "$(id -u)" != 0 ] || chown -R postgres "$REPLICA_DIR"
  as_postgres "$pgbin/postgres" -D "$REPLICA_DIR/data" >"$OUT/replica.log" 2>&1 &
  local tries=0
  until psql -qtAX "postgres://$user@127.0.0.1:$REPLICA_PORT/postgres" -c 'SELECT 1' >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ $tries -lt 300 ] || die "the replica did not start in 60 s"
    sleep 0.2
  done
  REPLICA_USER=$user
  REPLICA_PASSWORD=$password
}
stop_replica() {
  [ -n "$REPLICA_DIR" ] || return 0
  if [ -f "$REPLICA_DIR/data/postmaster.pid" ]; then
    kill -INT "$(head -n 1 "$REPLICA_DIR/data/postmaster.pid")" 2>/dev/null || true
    for _ in $(seq 1 40); do [ -f "$REPLICA_DIR/data/postmaster.pid" ] || break; sleep 0.5; done
  fi
  psql -qtAX "$PG_ADMIN_URL" -c "SELECT pg_drop_replication_slot('$REPLICA_SLOT')
    FROM pg_replication_slots WHERE slot_name = '$REPLICA_SLOT'" >/dev/null 2>&1 || true
  rm -rf "$REPLICA_DIR"
  REPLICA_DIR=""
}

# histogram_quantile NAME Q: the upper bound (ms) of the /metrics histogram NAME's bucket that
# holds quantile Q, or "—" when it counted nothing.
histogram_quantile() {
  curl -fsS "$BASE_URL/metrics" | awk -v name="$1" -v q="$2" '
    index($0, name "_bucket{") == 1 {
      match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
      n++; bound[n] = le; seen[n] = $NF
    }
    index($0, name "_count ") == 1 { count = $NF }
    END {
      if (count + 0 == 0) { print "—"; exit }
      for (i = 1; i <= n; i++) if (seen[i] >= q * count) {
        if (bound[i] == "+Inf") print "+Inf"; else printf "%g\n", bound[i] * 1000
        exit
      }
    }'
}

apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get install -y "$@" >"$OUT/apt.log" 2>&1 ||
    { $sudo apt-get update >>"$OUT/apt.log" 2>&1 && $sudo apt-get install -y "$@" >>"$OUT/apt.log" 2>&1; }
}

# create_db SUFFIX: a scratch database; prints its URL.
create_db() {
  local name="storefront_bench_${RUN_ID}_$1"
  psql -q -v ON_ERROR_STOP=1 "$PG_ADMIN_URL" -c "CREATE DATABASE \"$name\"" >/dev/null
  DATABASES+=("$name")
  note_cmd "psql $PG_ADMIN_URL -c 'CREATE DATABASE $name'"
  CREATED_URL="${PG_ADMIN_URL%/*}/$name"
}

# seed NAME URL ARGS...: runs the seeder, records NAME_s (elapsed) and NAME_items.
seed() {
  local name=$1 url=$2
  shift 2
  local cmd=("$BIN/seed" --database-url "$url" "$@")
  note_cmd "$(show "${cmd[@]}")"
  "${cmd[@]}" >"$OUT/$name.txt" 2>"$OUT/$name.log" || {
    cat "$OUT/$name.log" >&2
    die "seeding failed"
  }
  local line
  line=$(grep '^seeded ' "$OUT/$name.txt")
  echo "$line" >&2
  record "${name}_s" "$(sed -n 's/.*elapsed_s=\([0-9.]*\).*/\1/p' <<<"$line")"
  record "${name}_items" "$(sed -n 's/.*order_items=\([0-9]*\).*/\1/p' <<<"$line")"
}

# start_server NAME URL [VAR=VALUE...]
start_server() {
  local name=$1 url=$2
  shift 2
  SERVER_DB=${url##*/}
  SERVER_DB=${SERVER_DB%%\?*}
  local vars=(DATABASE_URL="$url" HOST=127.0.0.1 PORT="$PORT"
    ADMIN_EMAIL=bench-admin@storefront.test ADMIN_PASSWORD=bench-admin-password)
  [ -z "${RUST_LOG:-}" ] || vars+=(RUST_LOG="$RUST_LOG")
  vars+=("$@")
  note_cmd "$(show env "${vars[@]}" "$BIN/api") > \$OUT/server-$name.log 2>&1 &"
  env "${vars[@]}" "$BIN/api" >"$OUT/server-$name.log" 2>&1 &
  SERVER_PID=$!
  local tries=0
  until curl -fsS -o /dev/null "$BASE_URL/ready" 2>/dev/null; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      tail -n 20 "$OUT/server-$name.log" >&2
      die "the server exited during start-up"
    fi
    tries=$((tries + 1))
    [ $tries -lt 600 ] || die "the server did not become ready in 60 s"
    sleep 0.1
  done
  # Every protected route is read as the admin: the wrk scripts send BENCH_TOKEN (common.lua).
  BENCH_TOKEN=$(curl -fsS -XPOST "$BASE_URL/v1/sessions" -H 'content-type: application/json' \
    -d '{"email":"bench-admin@storefront.test","password":"bench-admin-password"}' |
    sed 's/.*"token":"\([^"]*\)".*/\1/')
  export BENCH_TOKEN
}

# server_memory KEY: records KEY_hwm_kb (peak RSS so far) and KEY_rss_kb (current RSS).
server_memory() {
  record "${1}_hwm_kb" "$(awk '/^VmHWM:/ { print $2 }' "/proc/$SERVER_PID/status")"
  record "${1}_rss_kb" "$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status")"
}

metric() { # metric PATTERN: the value of the first /metrics line that starts with PATTERN
  # awk reads to the end: exiting early would fail curl's write, and the pipeline with it.
  curl -fsS "$BASE_URL/metrics" | awk -v p="$1" 'index($0, p) == 1 && !found { print $NF; found = 1 }'
}

# wrk_for SECONDS NAME SCRIPT [ARGS...]: one wrk run; its BENCH line goes to $OUT/wrk-NAME.txt.
wrk_for() {
  local seconds=$1 name=$2 script=$3
  shift 3
  local cmd=(wrk "-t$THREADS" "-c${WRK_CONNECTIONS:-$CONNECTIONS}" "-d${seconds}s" --timeout 30s --latency
    -s "bench/lua/$script" "$BASE_URL" -- "$@")
  # get_user.lua reads its ids before wrk starts a thread, where it sees no arguments.
  [ -z "${BENCH_IDS:-}" ] || cmd=(env "BENCH_IDS=$BENCH_IDS" "${cmd[@]}")
  note_cmd "$(show "${cmd[@]}") > \$OUT/wrk-$name.txt"
  local TIMEFORMAT='%U %S'
  { time "${cmd[@]}" >"$OUT/wrk-$name.txt" 2>&1; } 2>"$OUT/wrk-$name.cpu" || {
    cat "$OUT/wrk-$name.txt" >&2
    die "wrk failed ($name)"
  }
  grep -q '^BENCH ' "$OUT/wrk-$name.txt" || {
    cat "$OUT/wrk-$name.txt" >&2
    die "wrk printed no summary ($name)"
  }
}

# CPU accounting, so that each figure says where the machine's time went (the load generator,
# the server and PostgreSQL share it, and other processes may be running too).
proc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# machine_ticks: "busy total" jiffies of all CPUs since boot.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
# pg_snapshot DB [APPLICATION]: "pid:jiffies …" of the database's backends (when PostgreSQL runs
# on this machine).
pg_snapshot() {
  [ "$PG_LOCAL" = 1 ] || return 0
  local pid filter=""
  [ -z "${2:-}" ] || filter=" AND application_name = '$2'"
  for pid in $(psql -tAX "$PG_ADMIN_URL" -c "SELECT pid FROM pg_stat_activity
      WHERE datname = '$1' AND pid <> pg_backend_pid()$filter"); do
    printf '%s:%s ' "$pid" "$(proc_ticks "$pid")"
  done
}
# tls_of DB [APPLICATION]: whether the database's client connections use TLS.
tls_of() {
  local filter=""
  [ -z "${2:-}" ] || filter=" AND a.application_name = '$2'"
  psql -tAX "$PG_ADMIN_URL" -c "SELECT CASE WHEN bool_and(s.ssl) THEN 'TLS' WHEN bool_or(s.ssl) THEN 'partly TLS' ELSE 'no TLS' END
    FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
    WHERE a.datname = '$1' AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'$filter"
}
# pg_delta BEFORE AFTER: jiffies the backends used in between (new backends count in full).
pg_delta() {
  awk -v b="$1" -v a="$2" 'BEGIN {
    n = split(b, x, " "); for (i = 1; i <= n; i++) { split(x[i], kv, ":"); before[kv[1]] = kv[2] }
    n = split(a, y, " "); t = 0
    for (i = 1; i <= n; i++) { split(y[i], kv, ":"); t += kv[2] - ((kv[1] in before) ? before[kv[1]] : 0) }
    print t }'
}
# cpu_summary NAME UNITS SERVER_J PG_J CLIENT_SECONDS MACHINE_BEFORE MACHINE_AFTER: records
# NAME_cpu_{server,pg,client}_us (CPU microseconds per request or transaction), NAME_busy_pct
# (the whole machine) and NAME_other_cores (cores busy with anything else: other processes,
# PostgreSQL's background workers, the kernel's own threads).
cpu_summary() {
  local name=$1 units=$2 server_j=$3 pg_j=$4 client_s=$5
  local mb=($6) ma=($7)
  local busy=$((ma[0] - mb[0])) total=$((ma[1] - mb[1]))
  [ "$units" -gt 0 ] && [ "$total" -gt 0 ] || return 0
  record "${name}_cpu_server_us" "$(calc "$server_j / $CLK_TCK * 1e6 / $units")"
  record "${name}_cpu_pg_us" "$( [ "$PG_LOCAL" = 1 ] && calc "$pg_j / $CLK_TCK * 1e6 / $units" || echo n/a)"
  record "${name}_cpu_client_us" "$(calc "$client_s * 1e6 / $units")"
  record "${name}_busy_pct" "$(calc "100 * $busy / $total")"
  local other
  other=$(calc "($busy - $server_j - $pg_j - $client_s * $CLK_TCK) / ($total / $machine_nproc)")
  # Jiffy rounding can make a near-zero remainder slightly negative.
  record "${name}_other_cores" "$(awk "BEGIN { printf \"%.2f\", ($other < 0) ? 0 : $other }")"
}

# measure NAME SCRIPT [ARGS...]: a measured run; records NAME_rps, NAME_p50_ms, NAME_p99_ms,
# NAME_errors, NAME_statuses, … and the CPU accounting.
measure() {
  local name=$1
  record "${name}_load_before" "$(loadavg)"
  local server_before pg_before machine_before
  # A short unmeasured run first: the pool grows to its size, connections prepare their
  # statements, caches and branch predictors settle.
  [ "$WARMUP_SECONDS" = 0 ] || wrk_for "$WARMUP_SECONDS" "$name-warmup" "${@:2}"
  server_before=$(proc_ticks "$SERVER_PID")
  pg_before=$(pg_snapshot "$SERVER_DB")
  machine_before=$(machine_ticks)
  wrk_for "$DURATION" "$@"
  local machine_after server_after pg_after
  machine_after=$(machine_ticks)
  server_after=$(proc_ticks "$SERVER_PID")
  pg_after=$(pg_snapshot "$SERVER_DB")
  local line kv
  line=$(grep '^BENCH ' "$OUT/wrk-$name.txt")
  for kv in ${line#BENCH }; do
    record "${name}_${kv%%=*}" "${kv#*=}"
  done
  local requests_var="${name}_requests"
  cpu_summary "$name" "${!requests_var}" "$((server_after - server_before))" \
    "$(pg_delta "$pg_before" "$pg_after")" "$(awk '{ print $1 + $2 }' "$OUT/wrk-$name.cpu")" \
    "$machine_before" "$machine_after"
  printf '%-12s %s\n' "$name" "${line#BENCH }" >&2
}

# profile NAME SCRIPT [ARGS...]: the same load again for PROFILE_SECONDS under `perf record -a`.
profile() {
  local name=$1
  shift
  [ "$PROFILE" = 1 ] || [ "$PROFILE" = all ] || return 0
  if ! command -v perf >/dev/null; then
    : >"$OUT/profile-$name-split.txt"
    return 0
  fi
  local data="$OUT/perf-$name.data"
  note_cmd "perf record -a -g -F 499 -o \$OUT/perf-$name.data -- sleep $PROFILE_SECONDS  # while:"
  perf record -a -g -F 499 -o "$data" -- sleep "$PROFILE_SECONDS" >"$OUT/perf-$name.log" 2>&1 &
  local perf_pid=$!
  BACKGROUND_PIDS+=("$perf_pid")
  wrk_for "$PROFILE_SECONDS" "$name-profile" "$@"
  wait "$perf_pid" || true
  BACKGROUND_PIDS=()
  local tids
  tids=$(ls "/proc/$SERVER_PID/task" | paste -sd, -)
  # Samples per thread, grouped: the server's threads, PostgreSQL, wrk, idle, everything else.
  perf report -i "$data" --stdio --no-children --sort pid -g none 2>/dev/null |
    awk -v tids=",$tids," '/^ *[0-9.]+%/ {
        pct = $1 + 0; split($2, t, ":"); tid = t[1]; comm = substr($2, length(tid) + 2)
        if (index(tids, "," tid ",")) g = "server (target/release/api)"
        else if (comm == "postgres") g = "postgres"
        else if (comm ~ /^wrk/) g = "wrk"
        else if (tid == 0) g = "idle"
        else g = "other processes"
        sum[g] += pct }
      END { for (g in sum) printf "%6.2f%%  %s\n", sum[g], g }' |
    sort -rn >"$OUT/profile-$name-split.txt" || true
  perf report -i "$data" --stdio --no-children --tid "$tids" --sort dso,sym -g none \
    --percent-limit 0.3 >"$OUT/profile-$name-server.txt" 2>/dev/null || true
  perf report -i "$data" --stdio --children --tid "$tids" --sort sym -g none \
    --percent-limit 4 >"$OUT/profile-$name-server-children.txt" 2>/dev/null || true
  perf report -i "$data" --stdio --no-children --comms postgres --sort dso,sym -g none \
    --percent-limit 0.3 >"$OUT/profile-$name-postgres.txt" 2>/dev/null || true
  note_cmd "perf report -i \$OUT/perf-$name.data --stdio --no-children --sort pid | --tid <server threads> --sort dso,sym | --comms postgres --sort dso,sym"
}

# pgbench_run NAME URL SCRIPT [pgbench args...]: records NAME_tps, NAME_p50_ms, NAME_p99_ms,
# NAME_failed.
pgbench_run() {
  local name=$1 url=$2 script=$3
  shift 3
  local prefix="$OUT/pgbench-$name"
  rm -f "$prefix".log*
  # A script made for this run lives in OUT; the others in bench/pgbench.
  [ "${script#/}" != "$script" ] || script="bench/pgbench/$script"
  local cmd=(pgbench -n -M prepared -c "$CONNECTIONS" -j "$THREADS" -T "$DURATION"
    -f "$script" "$@" -l --sampling-rate 0.2 --log-prefix "$prefix.log" "$url")
  note_cmd "$(show "${cmd[@]}") > \$OUT/pgbench-$name.txt"
  record "${name}_load_before" "$(loadavg)"
  local status=0 TIMEFORMAT='%U %S'
  { time "${cmd[@]}" >"$OUT/pgbench-$name.txt" 2>&1; } 2>"$OUT/pgbench-$name.cpu" &
  local pgbench_pid=$!
  BACKGROUND_PIDS+=("$pgbench_pid")
  # PostgreSQL's share: its pgbench backends between 2 s in and 1 s before the end.
  sleep 2
  local db=${url##*/} pg_before pg_after machine_before machine_after t0 t1
  db=${db%%\?*}
  pg_before=$(pg_snapshot "$db" pgbench)
  record "${name}_tls" "$(tls_of "$db" pgbench)"
  machine_before=$(machine_ticks)
  t0=$(date +%s.%N)
  sleep $((DURATION > 4 ? DURATION - 3 : 1))
  pg_after=$(pg_snapshot "$db" pgbench)
  machine_after=$(machine_ticks)
  t1=$(date +%s.%N)
  wait "$pgbench_pid" || status=$?
  BACKGROUND_PIDS=()
  local tps failed aborted
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$OUT/pgbench-$name.txt")
  [ -n "$tps" ] || {
    cat "$OUT/pgbench-$name.txt" >&2
    die "pgbench failed ($name)"
  }
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$OUT/pgbench-$name.txt")
  aborted=$(grep -c 'aborted' "$OUT/pgbench-$name.txt" || true)
  record "${name}_tps" "$(calc "$tps")"
  record "${name}_transactions" "$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$OUT/pgbench-$name.txt")"
  # Transactions in the sampled window, and pgbench's own CPU spread over all it ran.
  local window_tx all_tx client_s
  window_tx=$(calc "$tps * ($t1 - $t0)")
  all_tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$OUT/pgbench-$name.txt")
  client_s=$(awk -v all="${all_tx:-0}" -v w="$window_tx" '{ print (all > 0) ? ($1 + $2) * w / all : 0 }' "$OUT/pgbench-$name.cpu")
  cpu_summary "$name" "${window_tx%.*}" 0 "$(pg_delta "$pg_before" "$pg_after")" "$client_s" \
    "$machine_before" "$machine_after"
  record "${name}_failed" "${failed:-0}"
  record "${name}_aborted" "$aborted"
  record "${name}_status" "$status"
  # Per-transaction log: "client_id transaction_no time_us script_no epoch epoch_us …".
  cat "$prefix".log* | awk '$3 ~ /^[0-9]+$/ { print $3 }' | sort -n >"$OUT/pgbench-$name.lat"
  local n
  n=$(wc -l <"$OUT/pgbench-$name.lat")
  record "${name}_p50_ms" "$(awk -v n="$n" 'NR == int(n * 0.50 + 0.5) { printf "%.3f", $1 / 1000 }' "$OUT/pgbench-$name.lat")"
  record "${name}_p99_ms" "$(awk -v n="$n" 'NR == int(n * 0.99 + 0.5) { printf "%.3f", $1 / 1000 }' "$OUT/pgbench-$name.lat")"
  rm -f "$prefix".log*
  printf '%-12s tps=%s p50_ms=%s p99_ms=%s failed=%s aborted=%s\n' "$name" "$tps" \
    "$(eval echo "\$${name}_p50_ms")" "$(eval echo "\$${name}_p99_ms")" "${failed:-0}" "$aborted" >&2
}

# ---------------------------------------------------------------------------------------------
# The run

record run_started "$(date -u '+%Y-%m-%d %H:%M')"
for kv in users="$USERS" products="$PRODUCTS" orders="$ORDERS" small_users="$SMALL_USERS" \
  big_users="$BIG_USERS" deep="$DEEP" hot_products="$HOT_PRODUCTS" duration="$DURATION" \
  connections="$CONNECTIONS" threads="$THREADS" connections_high="$CONNECTIONS_HIGH" \
  mongo_users="$MONGO_USERS" mongo_products="$MONGO_PRODUCTS" rounds="$ROUNDS" few_users="$FEW_USERS"; do
  record "cfg_${kv%%=*}" "${kv#*=}"
done
[ "$DEEP" -lt "$BIG_USERS" ] || die "BENCH_DEEP ($DEEP) must be below BENCH_BIG_USERS ($BIG_USERS)"

say "tools"
command -v wrk >/dev/null || {
  echo "installing wrk" >&2
  apt_install wrk || die "could not install wrk (apt-get install -y wrk)"
}
if ! command -v pgbench >/dev/null; then
  found=$(ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | tail -n 1 || true)
  if [ -n "$found" ]; then
    PATH="$(dirname "$found"):$PATH"
  else
    echo "installing pgbench (postgresql-contrib)" >&2
    apt_install postgresql-contrib || die "could not install pgbench"
    found=$(ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | tail -n 1 || true)
    command -v pgbench >/dev/null || PATH="$(dirname "$found"):$PATH"
  fi
fi
for tool in psql curl awk; do
  command -v $tool >/dev/null || die "$tool is required"
done
command -v perf >/dev/null || echo "perf not found: missed targets will have no profile" >&2
psql -q "$PG_ADMIN_URL" -c 'SELECT 1' >/dev/null || die "cannot reach $PG_ADMIN_URL"

record machine_nproc "$(nproc)"
record machine_mem_mib "$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 }' /proc/meminfo)"
record machine_cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
record machine_kernel "$(uname -sr)"
record machine_pg "$(psql -tA "$PG_ADMIN_URL" -c 'SHOW server_version' | cut -d' ' -f1)"
record machine_wrk "$(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)"
record machine_pgbench "$(pgbench --version)"
record machine_rustc "$(rustc --version | cut -d' ' -f1-2)"
record server_rust_log "${RUST_LOG:-unset (info)}"
record load_start "$(loadavg)"
CLK_TCK=$(getconf CLK_TCK)
PG_LOCAL=0
pg_worker=$(psql -tAX "$PG_ADMIN_URL" -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
[ "$(cat "/proc/$pg_worker/comm" 2>/dev/null || true)" = postgres ] && PG_LOCAL=1
record pg_local "$PG_LOCAL"
record machine_pg_settings "$(psql -tAX "$PG_ADMIN_URL" -c "SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ', ' ORDER BY name)
  FROM pg_settings WHERE name IN ('ssl', 'synchronous_commit', 'fsync', 'shared_buffers', 'max_connections', 'work_mem')")"

say "build"
note_cmd "cargo build --release -p api -p bench"
record build_commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
record build_changes "$(git status --porcelain -- api entity migration Cargo.lock 2>/dev/null | wc -l)"
cargo build --release -p api -p bench
note_cmd "export LUA_PATH='bench/lua/?.lua;;'  # for the wrk scripts' require \"common\""

# runs PART: whether this run includes PART (every part unless BENCH_ONLY names one).
runs() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

# BENCH_ONLY=flash|reads: the main data set and those scenarios only.
if [ -z "$ONLY" ]; then
  say "hash rate"
  for threads in 1 "$machine_nproc"; do
    note_cmd "target/release/hashrate --seconds 5 --threads $threads"
    line=$("$BIN/hashrate" --seconds 5 --threads "$threads")
    echo "$line" >&2
    key=hash_rate_1
    [ "$threads" = 1 ] || key=hash_rate_all
    record "$key" "$(sed -n 's/.*per_second=\([0-9.]*\).*/\1/p' <<<"$line")"
  done
fi

say "databases"
create_db main
MAIN_URL=$CREATED_URL
if [ -z "$ONLY" ]; then
  create_db small
  SMALL_URL=$CREATED_URL
  create_db big
  BIG_URL=$CREATED_URL
fi

say "seeding"
seed seed_main "$MAIN_URL" --users "$USERS" --products "$PRODUCTS" --orders "$ORDERS" \
  --out-dir "$OUT/main"
if [ -z "$ONLY" ]; then
  seed seed_small "$SMALL_URL" --users "$SMALL_USERS" --products 100 --orders 0
  seed seed_big "$BIG_URL" --users "$BIG_USERS" --products "$PRODUCTS" --orders "$ORDERS" \
    --out-dir "$OUT/big" --cursor-depth 0 --cursor-depth "$DEEP" --cursors-per-depth 1000
fi

# The seeded ids, numbered, for pgbench to pick from.
helper_sql="CREATE TABLE bench_user_ids (n serial PRIMARY KEY, id uuid NOT NULL);
CREATE TABLE bench_product_ids (n serial PRIMARY KEY, id uuid NOT NULL);
\\copy bench_user_ids (id) FROM '$OUT/main/users.txt'
\\copy bench_product_ids (id) FROM '$OUT/main/products.txt'
VACUUM ANALYZE bench_user_ids, bench_product_ids;"
note_cmd "psql \"\$MAIN_URL\" <<'SQL'
${helper_sql//$OUT/\$OUT}
SQL"
psql -q -v ON_ERROR_STOP=1 "$MAIN_URL" >/dev/null <<<"$helper_sql"

if runs reads; then
  # Rounds of baseline-then-service (the report takes the median round's ratio), so that a
  # change in the machine's state during the run falls on both sides of a ratio alike.
  say "1. GET /v1/users/{id}, cache off, against pgbench, $ROUNDS rounds"
  start_server nocache "$MAIN_URL" CACHE_TTL_SECS=0 SESSION_CACHE_TTL_SECS=3600
  queries_before=$(metric 'db_queries_total')
  all_requests=0
  for round in $(seq 1 "$ROUNDS"); do
    # The service sits idle meanwhile: its pool's connections are open, nothing else.
    pgbench_run "pg_get_user_r$round" "$MAIN_URL" get_user.sql -D users="$USERS"
    BENCH_IDS="$OUT/main/users.txt" measure "s1_r$round" get_user.lua
    requests_var="s1_r${round}_requests"
    warmup_requests=$(sed -n 's/^BENCH requests=\([0-9]*\).*/\1/p' "$OUT/wrk-s1_r$round-warmup.txt" 2>/dev/null)
    all_requests=$((all_requests + ${!requests_var} + ${warmup_requests:-0}))
  done
  queries_after=$(metric 'db_queries_total')
  record s1_queries "$(awk "BEGIN { printf \"%d\", ${queries_after:-0} - ${queries_before:-0} }")"
  record s1_all_requests "$all_requests"
  record server_tls "$(tls_of "$SERVER_DB")"
  server_memory rss_nocache
  if target_missed s1; then
    BENCH_IDS="$OUT/main/users.txt" profile s1 get_user.lua
    stop_server
    # The same query through a pool built like the service's, without HTTP, with and without
    # the pool's checkout ping.
    for check in true false; do
      cmd=("$BIN/poolprobe" --database-url "$MAIN_URL" --ids "$OUT/main/users.txt"
        --concurrency "$CONNECTIONS" --seconds "$DURATION" --test-before-acquire "$check")
      note_cmd "$(show "${cmd[@]}")"
      line=$("${cmd[@]}")
      echo "$line" >&2
      for kv in qps p50_ms p99_ms; do
        record "probe_${check}_$kv" "$(sed -n "s/.* $kv=\([0-9.]*\).*/\1/p" <<<"$line")"
      done
    done
  fi
  stop_server

  say "2. GET /v1/users/{id}, cache warm, against /health, $ROUNDS rounds at each concurrency"
  start_server cached "$MAIN_URL"
  # Every user once, in order, until the cache holds them all.
  position=0
  for _ in 1 2 3 4 5 6 7 8; do
    wrk_for 10 "warm-$position" warm_users.lua "$OUT/main/users.txt" "$THREADS" "$position"
    done_requests=$(sed -n 's/^BENCH requests=\([0-9]*\).*/\1/p' "$OUT/wrk-warm-$position.txt")
    position=$((position + done_requests))
    [ "$position" -lt "$USERS" ] || break
  done
  sleep 1
  record cache_users_entries "$(metric 'cache_entries{cache="users"}')"
  server_memory rss_warm
  hits_before=$(metric 'cache_requests_total{cache="users",result="hit"}')
  misses_before=$(metric 'cache_requests_total{cache="users",result="miss"}')
  # The same read over a few users (cached like the rest): every look-up then finds its entry
  # in the CPU's caches, so the difference from the full read is what reading many costs.
  head -n "$FEW_USERS" "$OUT/main/users.txt" >"$OUT/main/users_few.txt"
  for round in $(seq 1 "$ROUNDS"); do
    measure "health_r$round" health.lua
    BENCH_IDS="$OUT/main/users.txt" measure "s2_r$round" get_user.lua
    BENCH_IDS="$OUT/main/users_few.txt" measure "s2_few_r$round" get_user.lua
  done
  hits_after=$(metric 'cache_requests_total{cache="users",result="hit"}')
  misses_after=$(metric 'cache_requests_total{cache="users",result="miss"}')
  record cache_hits "$(awk "BEGIN { printf \"%d\", ${hits_after:-0} - ${hits_before:-0} }")"
  record cache_lookups "$(awk "BEGIN { printf \"%d\", ${hits_after:-0} + ${misses_after:-0} - ${hits_before:-0} - ${misses_before:-0} }")"
  if profile_wanted s2; then
    BENCH_IDS="$OUT/main/users.txt" profile s2 get_user.lua
  fi
  # The same comparison at twice the connections: more requests in flight on the same cores.
  for round in $(seq 1 "$ROUNDS"); do
    WRK_CONNECTIONS=$CONNECTIONS_HIGH measure "health_high_r$round" health.lua
    WRK_CONNECTIONS=$CONNECTIONS_HIGH BENCH_IDS="$OUT/main/users.txt" measure "s2_high_r$round" get_user.lua
  done
  if profile_wanted s2_high; then
    WRK_CONNECTIONS=$CONNECTIONS_HIGH BENCH_IDS="$OUT/main/users.txt" profile s2_high get_user.lua
  fi
  server_memory rss_cached
  stop_server
fi

if [ -z "$ONLY" ]; then
  say "3. listings: page mode at $SMALL_USERS and $BIG_USERS users, cursor mode at depth 0 and $DEEP"
  start_server small "$SMALL_URL"
  measure page_small list_page.lua "$((SMALL_USERS / PER_PAGE))"
  server_memory rss_small
  stop_server
  start_server big "$BIG_URL"
  # The first deep request starts recording the listing's page positions in the background; the
  # measured run starts once they are recorded, however long that takes on this machine (the
  # wait is reported), so that it measures the steady state rather than the recording pass.
  wrk_for 1 page_big-first list_page.lua "$((BIG_USERS / PER_PAGE))"
  index_t0=$(date +%s.%N)
  until awk -v n="$(metric 'listing_index_builds_total{listing="users",outcome="built"}')" \
    'BEGIN { exit !(n + 0 >= 1) }'; do
    awk -v t0="$index_t0" -v now="$(date +%s.%N)" 'BEGIN { exit !(now - t0 < 300) }' ||
      die "the users listing's page positions were not recorded within 300 s"
    sleep 0.5
  done
  record page_big_index_wait_s "$(awk -v t0="$index_t0" -v now="$(date +%s.%N)" 'BEGIN { printf "%.1f", now - t0 }')"
  measure page_big list_page.lua "$((BIG_USERS / PER_PAGE))"
  record page_big_index_hits "$(metric 'listing_index_requests_total{listing="users",result="hit"}')"
  record page_big_index_misses "$(metric 'listing_index_requests_total{listing="users",result="miss"}')"
  record page_big_index_builds "$(metric 'listing_index_builds_total{listing="users",outcome="built"}')"
  if target_missed page_big; then
    profile page_big list_page.lua "$((BIG_USERS / PER_PAGE))"
  fi
  measure cursor_top list_cursor.lua "$OUT/big/cursors-0.txt"
  measure cursor_deep list_cursor.lua "$OUT/big/cursors-$DEEP.txt"
  if target_missed cursor_deep; then
    profile cursor_deep list_cursor.lua "$OUT/big/cursors-$DEEP.txt"
  fi
  server_memory rss_big
  stop_server
  # The plans behind those figures, for the report: a middle page, and the deep cursor's page
  # (the key of the user at newest-first position DEEP, as the service decodes it).
  columns='"users"."id", "users"."name", "users"."email", "users"."password_hash", "users"."status", "users"."created_at", "users"."updated_at"'
  mid_offset=$((BIG_USERS / 2))
  page_sql="SELECT pg_size_pretty(pg_relation_size('users')) AS users_heap, pg_size_pretty(pg_indexes_size('users')) AS users_indexes, current_setting('shared_buffers') AS shared_buffers;
  EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT COUNT(*) AS n FROM (SELECT 1 FROM \"users\" LIMIT 10001) AS capped;
  EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT $columns FROM \"users\" ORDER BY \"users\".\"created_at\" DESC, \"users\".\"id\" DESC LIMIT 20 OFFSET $mid_offset;"
  note_cmd "psql \"\$BIG_URL\" <<'SQL'  # the plans quoted in the report
  $page_sql"
  psql -q -X "$BIG_URL" >"$OUT/explain-page_big.txt" 2>&1 <<<"$page_sql" || true
  deep_key=$("$BIN/cursor" decode users "$(head -n 1 "$OUT/big/cursors-$DEEP.txt")")
  read -r deep_at deep_id <<<"$deep_key"
  cursor_sql="EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT $columns FROM \"users\" WHERE \"users\".\"created_at\" <= '$deep_at' AND (\"users\".\"created_at\" < '$deep_at' OR \"users\".\"id\" < '$deep_id') ORDER BY \"users\".\"created_at\" DESC, \"users\".\"id\" DESC LIMIT 21;"
  psql -q -X "$BIG_URL" >"$OUT/explain-cursor_deep.txt" 2>&1 <<<"$cursor_sql" || true
  note_cmd "$cursor_sql
  SQL"

  say "4. POST /v1/orders against pgbench"
  pgbench_run pg_orders "$MAIN_URL" place_order.sql -D users="$USERS" -D products="$PRODUCTS" -D base=0
  pgbench_run pg_orders_hot "$MAIN_URL" place_order.sql -D users="$USERS" -D products="$HOT_PRODUCTS" -D base=0
  start_server orders "$MAIN_URL"
  measure orders post_order.lua "$OUT/main/users.txt" "$OUT/main/products.txt" 0
  measure orders_hot post_order.lua "$OUT/main/users.txt" "$OUT/main/products.txt" "$HOT_PRODUCTS"
  if target_missed orders; then
    profile orders_hot post_order.lua "$OUT/main/users.txt" "$OUT/main/products.txt" "$HOT_PRODUCTS"
  fi
  server_memory rss_orders
  stop_server

  say "5. POST /v1/users"
  start_server users "$MAIN_URL"
  measure users_post post_user.lua "$RUN_ID"
  server_memory rss_users
  stop_server
fi

if runs flash; then
  say "6. flash sale: POST /v1/orders on $HOT_PRODUCTS products that sell out, against pgbench"
  # Enough stock to sell out about halfway through a run at 4b's rate (1-3 lines, 2 on average).
  FLASH_STOCK=${FLASH_STOCK:-$(awk -v r="$orders_hot_rps" -v d="$DURATION" -v n="$HOT_PRODUCTS" \
    'BEGIN { s = int(r * d / n); print (s < 1) ? 1 : s }')}
  record flash_stock_per_product "$FLASH_STOCK"
  record flash_stock_total "$((FLASH_STOCK * HOT_PRODUCTS))"
  # The flash products follow the seeded ones in bench_product_ids (n > PRODUCTS), in id order.
  flash_sql="WITH p AS (INSERT INTO products (id, sku, name, price_cents, stock, created_at, updated_at, version)
    SELECT gen_random_uuid(), 'FLASH-$RUN_ID-' || g, 'Flash sale product ' || g, 1000, $FLASH_STOCK, now(), now(), 1
      FROM generate_series(1, $HOT_PRODUCTS) AS g RETURNING id)
  INSERT INTO bench_product_ids (id) SELECT id FROM p ORDER BY id;"
  note_cmd "psql \"\$MAIN_URL\" -c \"$flash_sql\""
  psql -q -v ON_ERROR_STOP=1 "$MAIN_URL" -c "$flash_sql" >/dev/null
  psql -tAX "$MAIN_URL" -c "SELECT id FROM bench_product_ids WHERE n > $PRODUCTS ORDER BY n" >"$OUT/main/flash.txt"
  FLASH_IDS="(SELECT id FROM bench_product_ids WHERE n > $PRODUCTS)"
  # flash_reset: full stock again before a run; FLASH_T0 marks the run's start.
  # A write from outside the service announces what it changed on the cache channel, as the
  # service's own writes do, so a running server does not keep serving the sold-out products.
  flash_reset() {
    local reset="UPDATE products SET stock = $FLASH_STOCK, version = version + 1 WHERE id IN $FLASH_IDS"
    local announce="SELECT count(pg_notify('storefront_cache', 'products:' || id)) FROM products WHERE id IN $FLASH_IDS"
    note_cmd "psql \"\$MAIN_URL\" -c \"$reset\" -c \"$announce\" -c 'VACUUM products'"
    psql -q -v ON_ERROR_STOP=1 "$MAIN_URL" -c "$reset" -c "$announce" -c "VACUUM products" >/dev/null
    FLASH_T0=$(date +%s.%N)
  }
  # flash_sold NAME: records NAME_orders (placed since FLASH_T0), NAME_left (units),
  # NAME_last_sale_s (the last placed order's time, from FLASH_T0).
  flash_sold() {
    local row orders left last
    row=$(psql -tAX -F ' ' "$MAIN_URL" -c "WITH sold AS (
        SELECT DISTINCT o.id, o.created_at FROM order_items i JOIN orders o ON o.id = i.order_id
         WHERE i.product_id IN $FLASH_IDS AND o.created_at >= to_timestamp($FLASH_T0))
      SELECT (SELECT count(*) FROM sold), (SELECT sum(stock) FROM products WHERE id IN $FLASH_IDS),
             coalesce((SELECT round(extract(epoch FROM max(created_at)) - $FLASH_T0, 2) FROM sold)::text, '—')")
    read -r orders left last <<<"$row"
    record "${1}_orders" "$orders"
    record "${1}_left" "$left"
    record "${1}_last_sale_s" "$last"
  }
  flash_args=(-D users="$USERS" -D products="$HOT_PRODUCTS" -D base="$PRODUCTS")
  flash_reset
  pgbench_run pg_flash "$MAIN_URL" place_order.sql "${flash_args[@]}"
  flash_sold pg_flash
  flash_reset
  pgbench_run pg_flash_cte "$MAIN_URL" place_order_cte.sql "${flash_args[@]}"
  flash_sold pg_flash_cte
  # The same statement without its cache notices: NOTIFY serialises commits on a database-wide
  # lock, and this shows what that costs under contention.
  sed 's/(SELECT count(\*) FROM (SELECT pg_notify(.*) FROM items i) n) AS announced;/(SELECT count(*) FROM items) AS announced;/' \
    bench/pgbench/place_order_cte.sql >"$OUT/place_order_cte_quiet.sql"
  ! grep -q pg_notify "$OUT/place_order_cte_quiet.sql" || die "could not strip the notices from place_order_cte.sql"
  note_cmd "sed 's/(SELECT count(\\*) FROM (SELECT pg_notify(.*) FROM items i) n) AS announced;/(SELECT count(*) FROM items) AS announced;/' bench/pgbench/place_order_cte.sql > \$OUT/place_order_cte_quiet.sql"
  flash_reset
  pgbench_run pg_flash_quiet "$MAIN_URL" "$OUT/place_order_cte_quiet.sql" "${flash_args[@]}"
  flash_sold pg_flash_quiet
  start_server flash "$MAIN_URL"
  # Warm up on the flash products, then give them their stock back for the measured run.
  [ "$WARMUP_SECONDS" = 0 ] ||
    wrk_for "$WARMUP_SECONDS" flash-warmup post_order.lua "$OUT/main/users.txt" "$OUT/main/flash.txt" 0
  flash_reset
  WARMUP_SECONDS=0 measure flash post_order.lua "$OUT/main/users.txt" "$OUT/main/flash.txt" 0
  flash_sold flash
  if target_missed flash || target_missed flash_p99 || target_missed flash_statuses; then
    flash_reset
    profile flash post_order.lua "$OUT/main/users.txt" "$OUT/main/flash.txt" 0
fi
server_memory rss_flash
stop_server
fi

if [ "$MONGO" = 1 ] && [ -z "$ONLY" ]; then
  say "7. MongoDB: GET /v1/users/{id} cold and POST /v1/orders, against the driver alone"
  mongo_base=${MONGO_URL%%\?*}
  mongo_query=""
  [[ $MONGO_URL != *\?* ]] || mongo_query="?${MONGO_URL#*\?}"
  MONGO_DB_URL="${mongo_base%/}/storefront_bench_${RUN_ID}$mongo_query"
  MONGO_DROP_URL=$MONGO_DB_URL
  record machine_mongo "$("$BIN/mongobench" version --url "$MONGO_DB_URL")"
  cmd=("$BIN/mongobench" seed --url "$MONGO_DB_URL" --users "$MONGO_USERS" --products "$MONGO_PRODUCTS"
    --out-dir "$OUT/mongo")
  note_cmd "$(show "${cmd[@]}")"
  "${cmd[@]}" >"$OUT/seed_mongo.txt" 2>&1 || {
    cat "$OUT/seed_mongo.txt" >&2
    die "seeding MongoDB failed"
  }
  record seed_mongo_s "$(sed -n 's/.*elapsed_s=\([0-9.]*\).*/\1/p' "$OUT/seed_mongo.txt")"
  # mongo_driver NAME COMMAND ARGS...: a mongobench run at the same concurrency and duration as
  # wrk's; records NAME_rps, NAME_p50_ms, NAME_p99_ms, NAME_errors, NAME_retries.
  mongo_driver() {
    local name=$1 command=$2
    shift 2
    local cmd=("$BIN/mongobench" "$command" --url "$MONGO_DB_URL" "$@" --concurrency "$CONNECTIONS"
      --seconds "$DURATION" --warmup "$WARMUP_SECONDS")
    note_cmd "$(show "${cmd[@]}") > \$OUT/mongobench-$name.txt"
    record "${name}_load_before" "$(loadavg)"
    "${cmd[@]}" >"$OUT/mongobench-$name.txt" 2>&1 || {
      cat "$OUT/mongobench-$name.txt" >&2
      die "mongobench failed ($name)"
    }
    local line kv
    line=$(grep '^BENCH ' "$OUT/mongobench-$name.txt")
    for kv in ${line#BENCH }; do
      record "${name}_${kv%%=*}" "${kv#*=}"
    done
    printf '%-12s %s\n' "$name" "${line#BENCH }" >&2
  }
  mongo_driver mongo_driver_get get --users "$OUT/mongo/users.txt"
  start_server mongo_get "$MONGO_DB_URL" CACHE_TTL_SECS=0 SESSION_CACHE_TTL_SECS=3600
  BENCH_IDS="$OUT/mongo/users.txt" measure mongo_get get_user.lua
  server_memory rss_mongo_get
  stop_server
  mongo_driver mongo_driver_orders order --users "$OUT/mongo/users.txt" --products "$OUT/mongo/products.txt"
  start_server mongo_orders "$MONGO_DB_URL"
  measure mongo_orders post_order.lua "$OUT/mongo/users.txt" "$OUT/mongo/products.txt" 0
  server_memory rss_mongo_orders
  stop_server
  note_cmd "$(show "$BIN/mongobench" drop --url "$MONGO_DB_URL")"
  "$BIN/mongobench" drop --url "$MONGO_DB_URL"
  MONGO_DROP_URL=""
fi

if runs replica; then
  say "8. GET /v1/users/{id}, cache off, with one streaming replica; reads presenting a write's token"
  start_replica
  replica_url="postgres://$REPLICA_USER:$REPLICA_PASSWORD@127.0.0.1:$REPLICA_PORT/${MAIN_URL##*/}"
  start_server replica "$MAIN_URL" CACHE_TTL_SECS=0 SESSION_CACHE_TTL_SECS=3600 \
    DATABASE_REPLICA_URLS="$replica_url"
  replica_before=$(metric 'db_reads_total{source="replica"}')
  primary_before=$(metric 'db_reads_total{source="primary"}')
  BENCH_IDS="$OUT/main/users.txt" measure replica_cold get_user.lua
  record replica_cold_replica_reads "$(awk "BEGIN { printf \"%d\", $(metric 'db_reads_total{source="replica"}') - ${replica_before:-0} }")"
  record replica_cold_primary_reads "$(awk "BEGIN { printf \"%d\", $(metric 'db_reads_total{source="primary"}') - ${primary_before:-0} }")"
  stop_server
  # A write, then a read presenting the write's token: each read waits for the replica to replay
  # that write (DB_REPLICA_WAIT_MS at most, then the primary answers).
  start_server replica_token "$MAIN_URL" CACHE_TTL_SECS=0 SESSION_CACHE_TTL_SECS=3600 \
    DATABASE_REPLICA_URLS="$replica_url"
  measure replica_token write_then_read.lua "$OUT/main/products.txt"
  record replica_token_waits "$(metric 'db_replica_wait_seconds_count')"
  record replica_token_wait_p50_ms "$(histogram_quantile db_replica_wait_seconds 0.5)"
  record replica_token_wait_p99_ms "$(histogram_quantile db_replica_wait_seconds 0.99)"
  record replica_token_replica_reads "$(metric 'db_reads_total{source="replica"}')"
  record replica_token_primary_reads "$(metric 'db_reads_total{source="primary"}')"
  stop_server
  stop_replica
fi

record load_end "$(loadavg)"
# One INFO line per request adds up to gigabytes over a run.
gzip -f "$OUT"/server-*.log

say "report"
write_report
