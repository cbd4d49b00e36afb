#!/usr/bin/env bash
# Measures the release build of the service against PostgreSQL's own limits and writes
# BENCHMARKS.md at the repository root.
#
#   scripts/bench.sh                      # everything: build, seed, measure, report (~15 min)
#   scripts/bench.sh --report DIR         # rewrite BENCHMARKS.md from a finished run's DIR
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
#   BENCH_HOT_PRODUCTS  products the contended order run draws from [10]
#   BENCH_WARMUP        seconds of unmeasured load before each measured run [3]
#   BENCH_PORT          the server's port [18080]
#   BENCH_PROFILE       1: record a perf profile for every missed target [1]
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
PORT=${BENCH_PORT:-18080}
PROFILE=${BENCH_PROFILE:-1}
PROFILE_SECONDS=8
WARMUP_SECONDS=${BENCH_WARMUP:-3}
REPORT=${BENCH_REPORT:-BENCHMARKS.md}
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
    arg=${arg//$ROOT\//}
    [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]] || arg=$(printf '%q' "$arg")
    out+="${out:+ }$arg"
  done
  printf '%s' "$out"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ---------------------------------------------------------------------------------------------
# The report (also usable on its own with --report DIR)

verdict() { if [ "$1" = 1 ]; then echo "met"; else echo "**missed**"; fi; }

# profile_excerpt NAME: the top of a recorded profile, for a missed target.
# excerpt FILE LINES: the first LINES lines of a perf report, without comments and blank lines.
excerpt() {
  local text
  text=$(awk '!/^#/ && NF' "$1" 2>/dev/null | cut -c1-150 | head -n "$2" || true)
  printf '%s\n' "${text:-(nothing above the reporting threshold)}"
}

profile_excerpt() {
  local name=$1 f="$OUT/profile-$1"
  if [ -s "$f-split.txt" ]; then
    echo
    local rerun
    rerun=$(sed -n 's/^BENCH .* rps=\([0-9.]*\) .*/\1/p' "$OUT/wrk-$name-profile.txt" 2>/dev/null || true)
    echo "A profile of the same load, run again for $PROFILE_SECONDS s under" \
      "\`perf record -a -g\` (raw data: \`perf-$name.data\`; that re-run did" \
      "${rerun:-?} requests/s). All samples, by process:"
    echo
    echo '```'
    cat "$f-split.txt"
    echo '```'
    echo
    echo "The server's threads, hottest functions (self time, \`--sort dso,sym\`):"
    echo
    echo '```'
    excerpt "$f-server.txt" 20
    echo '```'
    echo
    echo "The server's threads, inclusive time (\`--children --sort sym\`), top entries:"
    echo
    echo '```'
    excerpt "$f-server-children.txt" 30
    echo '```'
    echo
    echo "PostgreSQL's processes, hottest functions:"
    echo
    echo '```'
    excerpt "$f-postgres.txt" 15
    echo '```'
  elif [ -f "$f-split.txt" ]; then
    echo
    echo "(No profile: perf was not available.)"
  fi
}

# explain_excerpt NAME: a saved EXPLAIN (ANALYZE, BUFFERS).
explain_excerpt() {
  if [ -s "$OUT/explain-$1.txt" ]; then
    echo
    echo '```'
    cat "$OUT/explain-$1.txt"
    echo '```'
  fi
}

mib() { calc "$1 / 1024"; }

# ratio A B: A / B, to three significant decimals where it matters (0.695, 61.4).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { r = a / b; printf (r < 10) ? "%.3f" : "%.1f", r }'; }

# get NAME: the recorded value, or a dash.
get() { local v=${!1:-}; printf '%s' "${v:-—}"; }

# cpu_row LABEL NAME: a row of the CPU table.
cpu_row() {
  local name=$2 server
  server=$(get "${name}_cpu_server_us")
  [ "$server" != 0.00 ] || server="—"
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$(get "${name}_busy_pct")" "$server" \
    "$(get "${name}_cpu_pg_us")" "$(get "${name}_cpu_client_us")" "$(get "${name}_other_cores")" \
    "$(get "${name}_load_before")"
}

write_report() {
  # shellcheck disable=SC1091
  source "$OUT/results.env"
  local r1 r2 r3 r4 r4o r4h m1 m2 m3 m4 m5 m6 rss_limit_kb=$((150 * 1024))
  r1=$(ratio "$s1_rps" "$pg_get_user_tps")
  r2=$(ratio "$s2_rps" "$health_rps")
  r3=$(ratio "$page_big_p99_ms" "$page_small_p99_ms")
  r4=$(ratio "$cursor_deep_p99_ms" "$cursor_top_p99_ms")
  r4o=$(ratio "$orders_rps" "$pg_orders_tps")
  r4h=$(ratio "$orders_hot_rps" "$pg_orders_hot_tps")
  # Verdicts on the measured values, not on the rounded ratios.
  m1=$(awk "BEGIN { print ($s1_rps >= 0.5 * $pg_get_user_tps) }")
  m2=$(awk "BEGIN { print ($s2_rps >= 0.7 * $health_rps) }")
  m3=$(awk "BEGIN { print ($page_big_p99_ms <= 5 * $page_small_p99_ms) }")
  m4=$(awk "BEGIN { print ($cursor_deep_p99_ms <= 1.5 * $cursor_top_p99_ms) }")
  m5=$(((orders_errors + orders_hot_errors) == 0 ? 1 : 0))
  m6=$((rss_cached_hwm_kb < rss_limit_kb ? 1 : 0))
  local users_vs_hash
  users_vs_hash=$(calc "$users_post_rps / ($hash_rate_1 * $machine_nproc)")

  {
    cat <<EOF
# Benchmarks

Produced by \`scripts/bench.sh\` on $run_started (UTC); raw output in \`${OUT#"$ROOT"/}\` (not
committed). Everything below comes from that one run: each figure and the baseline it is
compared with were measured minutes apart on the same machine, the same PostgreSQL server and the
same data.

## Machine

| | |
|---|---|
| CPU | $machine_cpu, **$machine_nproc cores** (\`nproc\`) |
| memory | $machine_mem_mib MiB |
| kernel | $machine_kernel |
| PostgreSQL | $machine_pg, same machine, reached over TCP on 127.0.0.1 with the clients' default \`sslmode=prefer\` (pgbench: $pg_get_user_tls, the service: $server_tls); $machine_pg_settings |
| load generators | $machine_wrk; $machine_pgbench |
| Rust | $machine_rustc, \`cargo build --release\` (the workspace's release profile) |
| service built from | commit \`$build_commit\`$( [ "${build_changes:-0}" = 0 ] && echo ", no uncommitted changes under api/, entity/, migration/" || echo " plus uncommitted changes to $build_changes file(s) under api/, entity/, migration/ or in Cargo.lock" ) |
| load average at start | $load_start |

The load generator, the server and PostgreSQL share these $machine_nproc cores, so every figure
is a whole-machine figure: wrk and pgbench take their share of the CPU, as the profiles below
show. Ratios between runs are the meaningful output; absolute numbers are specific to this box.

## Method

- Data (\`target/release/seed\`, PostgreSQL \`COPY … FROM STDIN\` after the service's own
  migrations, then \`VACUUM (ANALYZE)\`): main set $USERS users, $PRODUCTS products
  (100,000,000 in stock each), $ORDERS orders of 1–3 items; $SMALL_USERS users for the small
  listing; $BIG_USERS users for the large listings. UUIDv7 ids made from \`created_at\`, spread
  over the past year; unique lower-case emails; statuses 80/15/5 % active/inactive/suspended;
  every user has the same precomputed Argon2id hash (m=19456, t=2, p=1) of one password.
- Seeding took **${seed_main_s} s** for $USERS users / $PRODUCTS products / $ORDERS orders
  ($seed_main_items items) and **${seed_big_s} s** for $BIG_USERS users / $PRODUCTS products /
  $ORDERS orders ($seed_big_items items), migrations and VACUUM included.
- HTTP load: \`wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --timeout 30s --latency\` with a Lua
  script per scenario (\`bench/lua/\`) that picks random seeded ids, pages or cursors. Latencies
  are wrk's (coordinated omission not corrected); "errors" are socket errors plus any status the
  scenario does not allow.
- Database baselines: \`pgbench -n -M prepared -c $CONNECTIONS -j $THREADS -T $DURATION\` with
  \`bench/pgbench/get_user.sql\` (the service's primary-key lookup, every column, \`LIMIT 1\`)
  and \`bench/pgbench/place_order.sql\` (the order transaction's statements and round trips);
  random seeded ids come from helper tables \`bench_user_ids\`/\`bench_product_ids\`
  (\`n serial primary key, id uuid\`), so each baseline statement also does one small
  primary-key probe the service does not. pgbench ran while no server was running. Its p50/p99
  come from its per-transaction log (\`-l --sampling-rate 0.2\`).
- Each scenario group ran in its own server process (release build, \`DATABASE_URL\`, \`PORT\`,
  otherwise defaults unless stated: pool 20, cache TTL 3600 s, 100,000 entries, \`RUST_LOG\`
  ${server_rust_log}, stdout to a file); peak RSS is \`VmHWM\` from \`/proc/<pid>/status\` when
  the group ended.

## Results

| scenario | requests/s | p50 ms | p99 ms | errors | status mix | server peak RSS |
|---|---:|---:|---:|---:|---|---:|
| pgbench: user by primary key | $pg_get_user_tps tps | $pg_get_user_p50_ms | $pg_get_user_p99_ms | $pg_get_user_failed | | |
| 1. \`GET /v1/users/{id}\`, cache off | $s1_rps | $s1_p50_ms | $s1_p99_ms | $s1_errors | $s1_statuses | $(mib "$rss_nocache_hwm_kb") MiB |
| \`GET /health\` | $health_rps | $health_p50_ms | $health_p99_ms | $health_errors | $health_statuses | |
| 2. \`GET /v1/users/{id}\`, cache warm | $s2_rps | $s2_p50_ms | $s2_p99_ms | $s2_errors | $s2_statuses | $(mib "$rss_cached_hwm_kb") MiB |
| 3a. page mode, $SMALL_USERS users | $page_small_rps | $page_small_p50_ms | $page_small_p99_ms | $page_small_errors | $page_small_statuses | $(mib "$rss_small_hwm_kb") MiB |
| 3b. page mode, $BIG_USERS users | $page_big_rps | $page_big_p50_ms | $page_big_p99_ms | $page_big_errors | $page_big_statuses | |
| 3c. cursor mode, depth 0, $BIG_USERS users | $cursor_top_rps | $cursor_top_p50_ms | $cursor_top_p99_ms | $cursor_top_errors | $cursor_top_statuses | |
| 3d. cursor mode, depth $DEEP, $BIG_USERS users | $cursor_deep_rps | $cursor_deep_p50_ms | $cursor_deep_p99_ms | $cursor_deep_errors | $cursor_deep_statuses | $(mib "$rss_big_hwm_kb") MiB |
| pgbench: order transaction, $PRODUCTS products | $pg_orders_tps tps | $pg_orders_p50_ms | $pg_orders_p99_ms | $pg_orders_failed | | |
| 4a. \`POST /v1/orders\`, $PRODUCTS products | $orders_rps | $orders_p50_ms | $orders_p99_ms | $orders_errors | $orders_statuses | |
| pgbench: order transaction, $HOT_PRODUCTS hot products | $pg_orders_hot_tps tps | $pg_orders_hot_p50_ms | $pg_orders_hot_p99_ms | $pg_orders_hot_failed | | |
| 4b. \`POST /v1/orders\`, $HOT_PRODUCTS hot products | $orders_hot_rps | $orders_hot_p50_ms | $orders_hot_p99_ms | $orders_hot_errors | $orders_hot_statuses | $(mib "$rss_orders_hwm_kb") MiB |
| 5. \`POST /v1/users\` | $users_post_rps | $users_post_p50_ms | $users_post_p99_ms | $users_post_errors | $users_post_statuses | $(mib "$rss_users_hwm_kb") MiB |

With the cache off, the service batches concurrent point reads (\`api/src/repo/batch.rs\`):
scenario 1's server made **$(get s1_queries)** queries for $(get s1_all_requests) requests
(warm-up included), $(calc "${s1_all_requests:-0} / (${s1_queries:-0} + 0.000001)") reads per query. In page mode
the users listing reads pages from recorded page positions (README, "Deep pages"), which the
server records in the background after the first deep request, during the warm-up: at
$BIG_USERS users **$(get page_big_index_hits)** requests (warm-up included) were answered from
them, $(get page_big_index_misses) the plain way while they were being recorded, in
$(get page_big_index_builds) pass(es) over the index.

Page mode draws pages uniformly from all of them ($((SMALL_USERS / PER_PAGE)) and
$((BIG_USERS / PER_PAGE)) pages of $PER_PAGE). Cursor runs draw from 1,000 cursors at
newest-first positions 0–999 and $DEEP–$((DEEP + 999)) (computed by the seeder exactly as the
service encodes them). The pgbench "errors" column is failed transactions; ${pg_aborted_note} pgbench's
p50/p99 come from its per-transaction log, and pgbench reads the clock lazily, once per pass of
each thread's event loop, so on a saturated machine many transactions get near-zero latencies
and its p50 is not comparable with wrk's; its mean latency is connections ÷ tps (e.g.
$(calc "$CONNECTIONS * 1000 / $pg_get_user_tps") ms for the lookup).

### Where the CPU went

CPU time per request (per transaction for pgbench) of the server process, of the PostgreSQL
backends serving it, and of the load generator, from \`/proc/<pid>/stat\` before and after each
run (pgbench: its backends between 2 s in and 1 s before the end). "Other" is what the rest of
the machine used meanwhile, in cores: PostgreSQL's background processes, the kernel, and
whatever else was running.

| run | machine busy % | server µs | PostgreSQL µs | wrk/pgbench µs | other, cores | load avg before |
|---|---:|---:|---:|---:|---:|---|
$(cpu_row "pgbench: user by primary key" pg_get_user)
$(cpu_row "1. user by id, cache off" s1)
$(cpu_row "\`/health\`" health)
$(cpu_row "2. user by id, cache warm" s2)
$(cpu_row "3a. page mode, $SMALL_USERS users" page_small)
$(cpu_row "3b. page mode, $BIG_USERS users" page_big)
$(cpu_row "3c. cursor, depth 0" cursor_top)
$(cpu_row "3d. cursor, depth $DEEP" cursor_deep)
$(cpu_row "pgbench: order, $PRODUCTS products" pg_orders)
$(cpu_row "4a. orders, $PRODUCTS products" orders)
$(cpu_row "pgbench: order, $HOT_PRODUCTS hot products" pg_orders_hot)
$(cpu_row "4b. orders, $HOT_PRODUCTS hot products" orders_hot)
$(cpu_row "5. create user" users_post)

Cache: after warming, the users cache held **$cache_users_entries** entries; during scenario 2,
$cache_hits of $cache_lookups user lookups were hits. The server's RSS right after warming was
$(mib "$rss_warm_rss_kb") MiB.

Argon2id (\`target/release/hashrate\`, m=19456 KiB, t=2, p=1): **$hash_rate_1 hashes/s on one
core**, $hash_rate_all/s on $machine_nproc threads. \`POST /v1/users\` reached $users_post_rps/s,
$users_vs_hash× one core's rate times $machine_nproc cores.

## Targets

| target | measured | |
|---|---|---|
| 1. user by id, cache off ≥ 0.5× pgbench | $s1_rps / $pg_get_user_tps = **${r1}×** | $(verdict "$m1") |
| 2. user by id, cache warm ≥ 0.7× \`/health\` | $s2_rps / $health_rps = **${r2}×** | $(verdict "$m2") |
| 3. page-mode p99 at $BIG_USERS users ≤ 5× at $SMALL_USERS | $page_big_p99_ms / $page_small_p99_ms ms = **${r3}×** | $(verdict "$m3") |
| 3. cursor p99 at depth $DEEP ≤ 1.5× at depth 0 | $cursor_deep_p99_ms / $cursor_top_p99_ms ms = **${r4}×** | $(verdict "$m4") |
| 4. orders: no errors but 409 | random: $orders_statuses; hot: $orders_hot_statuses; errors $orders_errors + $orders_hot_errors | $(verdict "$m5") |
| RSS < 150 MiB with $cache_users_entries users cached | $(mib "$rss_cached_hwm_kb") MiB peak | $(verdict "$m6") |

Orders against their pgbench script (no target): ${r4o}× with $PRODUCTS products, ${r4h}× with
$HOT_PRODUCTS hot products.
EOF

    echo
    echo "## Missed targets"
    local any=0
    if [ "$m1" != 1 ]; then
      any=1
      cat <<EOF

### 1. User by id without the cache: ${r1}× pgbench (target 0.5×)
$(cat "$ROOT/bench/notes/s1.md" 2>/dev/null || true)
EOF
      if [ -n "${probe_true_qps:-}" ]; then
        cat <<EOF

\`target/release/poolprobe\` (the service's query through a SeaORM pool configured like the
service's, $CONNECTIONS concurrent tasks, no HTTP; same database, same $DURATION s):

| pool | queries/s | p50 ms | p99 ms | vs pgbench |
|---|---:|---:|---:|---:|
| as the service builds it (\`test_before_acquire\` on) | $probe_true_qps | $probe_true_p50_ms | $probe_true_p99_ms | $(calc "$probe_true_qps / $pg_get_user_tps")× |
| \`test_before_acquire(false)\` | $probe_false_qps | $probe_false_p50_ms | $probe_false_p99_ms | $(calc "$probe_false_qps / $pg_get_user_tps")× |
EOF
      fi
      profile_excerpt s1
    fi
    if [ "$m2" != 1 ]; then
      any=1
      cat <<EOF

### 2. User by id from the cache: ${r2}× \`/health\` (target 0.7×)
$(cat "$ROOT/bench/notes/s2.md" 2>/dev/null || true)
EOF
      profile_excerpt s2
    fi
    if [ "$m3" != 1 ]; then
      any=1
      cat <<EOF

### 3. Page mode: p99 ${r3}× at $BIG_USERS users against $SMALL_USERS (target 5×)
$(cat "$ROOT/bench/notes/page.md" 2>/dev/null || true)

The listing query at a middle page of the large set (\`EXPLAIN (ANALYZE, BUFFERS)\`):
EOF
      explain_excerpt page_big
      profile_excerpt page_big
    fi
    if [ "$m4" != 1 ]; then
      any=1
      cat <<EOF

### 3. Cursor mode: p99 ${r4}× at depth $DEEP against depth 0 (target 1.5×)
$(cat "$ROOT/bench/notes/cursor.md" 2>/dev/null || true)

The keyset query at depth $DEEP (\`EXPLAIN (ANALYZE, BUFFERS)\`):
EOF
      explain_excerpt cursor_deep
      profile_excerpt cursor_deep
    fi
    if [ "$m5" != 1 ]; then
      any=1
      cat <<EOF

### 4. Orders answered something other than 201/409
Random products: $orders_statuses ($orders_socket_errors socket errors); hot products:
$orders_hot_statuses ($orders_hot_socket_errors socket errors).
$(cat "$ROOT/bench/notes/orders.md" 2>/dev/null || true)
EOF
      profile_excerpt orders_hot
    fi
    if [ "$m6" != 1 ]; then
      any=1
      cat <<EOF

### RSS with the users cached: $(mib "$rss_cached_hwm_kb") MiB (target < 150 MiB)
$(cat "$ROOT/bench/notes/rss.md" 2>/dev/null || true)
EOF
    fi
    [ "$any" = 1 ] || printf '\nNone.\n'
    if [ -s "$ROOT/bench/notes/general.md" ]; then
      echo
      cat "$ROOT/bench/notes/general.md"
    fi

    cat <<EOF

## Exact commands

In the order they ran (\`\$OUT\` is \`${OUT#"$ROOT"/}\`; the scratch databases were dropped at
the end):

\`\`\`sh
$(sed -e "s|$OUT|\$OUT|g" -e "s|${OUT#"$ROOT"/}|\$OUT|g" "$OUT/commands.txt")
\`\`\`
EOF
  } >"$REPORT.tmp"
  mv "$REPORT.tmp" "$REPORT"
  say "wrote $REPORT"
}

if [ "${1:-}" = "--report" ]; then
  [ -n "${2:-}" ] && [ -f "$2/results.env" ] || die "usage: scripts/bench.sh --report DIR (a finished run)"
  OUT=$(cd "$2" && pwd)
  # Settings as they were for that run.
  # shellcheck disable=SC1091
  source "$OUT/results.env"
  USERS=$cfg_users PRODUCTS=$cfg_products ORDERS=$cfg_orders SMALL_USERS=$cfg_small_users
  BIG_USERS=$cfg_big_users DEEP=$cfg_deep HOT_PRODUCTS=$cfg_hot_products DURATION=$cfg_duration
  CONNECTIONS=$cfg_connections THREADS=$cfg_threads
  write_report
  exit 0
fi
[ $# -eq 0 ] || die "usage: scripts/bench.sh [--report DIR]"

# ---------------------------------------------------------------------------------------------
# Setup and teardown

OUT=${BENCH_OUT:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: >"$OUT/results.env"
: >"$OUT/commands.txt"

SERVER_PID=""
SERVER_DB=""
PG_LOCAL=0
BACKGROUND_PIDS=()
DATABASES=()
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
  local db
  for db in "${DATABASES[@]}"; do
    psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 ||
      echo "bench: could not drop scratch database $db" >&2
  done
  [ $status -eq 0 ] || echo "bench: failed (status $status); raw output in $OUT" >&2
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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
  local cmd=(target/release/seed --database-url "$url" "$@")
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
  note_cmd "$(show env "${vars[@]}" target/release/api) > \$OUT/server-$name.log 2>&1 &"
  env "${vars[@]}" target/release/api >"$OUT/server-$name.log" 2>&1 &
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
  local cmd=(wrk "-t$THREADS" "-c$CONNECTIONS" "-d${seconds}s" --timeout 30s --latency
    -s "bench/lua/$script" "$BASE_URL" -- "$@")
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
  [ "$PROFILE" = 1 ] || return 0
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
  local cmd=(pgbench -n -M prepared -c "$CONNECTIONS" -j "$THREADS" -T "$DURATION"
    -f "bench/pgbench/$script" "$@" -l --sampling-rate 0.2 --log-prefix "$prefix.log" "$url")
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

missed() { # missed EXPR: true when the awk condition EXPR is false
  [ "$(awk "BEGIN { print ($*) ? 1 : 0 }")" = 0 ]
}

# ---------------------------------------------------------------------------------------------
# The run

record run_started "$(date -u '+%Y-%m-%d %H:%M')"
for kv in users="$USERS" products="$PRODUCTS" orders="$ORDERS" small_users="$SMALL_USERS" \
  big_users="$BIG_USERS" deep="$DEEP" hot_products="$HOT_PRODUCTS" duration="$DURATION" \
  connections="$CONNECTIONS" threads="$THREADS"; do
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

say "hash rate"
for threads in 1 "$machine_nproc"; do
  note_cmd "target/release/hashrate --seconds 5 --threads $threads"
  line=$(target/release/hashrate --seconds 5 --threads "$threads")
  echo "$line" >&2
  key=hash_rate_1
  [ "$threads" = 1 ] || key=hash_rate_all
  record "$key" "$(sed -n 's/.*per_second=\([0-9.]*\).*/\1/p' <<<"$line")"
done

say "databases"
create_db main
MAIN_URL=$CREATED_URL
create_db small
SMALL_URL=$CREATED_URL
create_db big
BIG_URL=$CREATED_URL

say "seeding"
seed seed_main "$MAIN_URL" --users "$USERS" --products "$PRODUCTS" --orders "$ORDERS" \
  --out-dir "$OUT/main"
seed seed_small "$SMALL_URL" --users "$SMALL_USERS" --products 100 --orders 0
seed seed_big "$BIG_URL" --users "$BIG_USERS" --products "$PRODUCTS" --orders "$ORDERS" \
  --out-dir "$OUT/big" --cursor-depth 0 --cursor-depth "$DEEP" --cursors-per-depth 1000

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

say "1. GET /v1/users/{id}, cache off, against pgbench"
pgbench_run pg_get_user "$MAIN_URL" get_user.sql -D users="$USERS"
start_server nocache "$MAIN_URL" CACHE_TTL_SECS=0
queries_before=$(metric 'db_queries_total')
measure s1 get_user.lua "$OUT/main/users.txt"
queries_after=$(metric 'db_queries_total')
warmup_requests=$(sed -n 's/^BENCH requests=\([0-9]*\).*/\1/p' "$OUT/wrk-s1-warmup.txt" 2>/dev/null)
record s1_queries "$(awk "BEGIN { printf \"%d\", ${queries_after:-0} - ${queries_before:-0} }")"
record s1_all_requests "$((s1_requests + ${warmup_requests:-0}))"
record server_tls "$(tls_of "$SERVER_DB")"
server_memory rss_nocache
if missed "$s1_rps >= 0.5 * $pg_get_user_tps"; then
  profile s1 get_user.lua "$OUT/main/users.txt"
  stop_server
  # The same query through a pool built like the service's, without HTTP, with and without
  # the pool's checkout ping.
  for check in true false; do
    cmd=(target/release/poolprobe --database-url "$MAIN_URL" --ids "$OUT/main/users.txt"
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

say "2. GET /v1/users/{id}, cache warm, against /health"
start_server cached "$MAIN_URL"
measure health health.lua
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
measure s2 get_user.lua "$OUT/main/users.txt"
hits_after=$(metric 'cache_requests_total{cache="users",result="hit"}')
misses_after=$(metric 'cache_requests_total{cache="users",result="miss"}')
record cache_hits "$(awk "BEGIN { printf \"%d\", ${hits_after:-0} - ${hits_before:-0} }")"
record cache_lookups "$(awk "BEGIN { printf \"%d\", ${hits_after:-0} + ${misses_after:-0} - ${hits_before:-0} - ${misses_before:-0} }")"
server_memory rss_cached
if missed "$s2_rps >= 0.7 * $health_rps"; then
  profile s2 get_user.lua "$OUT/main/users.txt"
fi
stop_server

say "3. listings: page mode at $SMALL_USERS and $BIG_USERS users, cursor mode at depth 0 and $DEEP"
start_server small "$SMALL_URL"
measure page_small list_page.lua "$((SMALL_USERS / PER_PAGE))"
server_memory rss_small
stop_server
start_server big "$BIG_URL"
measure page_big list_page.lua "$((BIG_USERS / PER_PAGE))"
record page_big_index_hits "$(metric 'listing_index_requests_total{listing="users",result="hit"}')"
record page_big_index_misses "$(metric 'listing_index_requests_total{listing="users",result="miss"}')"
record page_big_index_builds "$(metric 'listing_index_builds_total{listing="users",outcome="built"}')"
if missed "$page_big_p99_ms <= 5 * $page_small_p99_ms"; then
  profile page_big list_page.lua "$((BIG_USERS / PER_PAGE))"
fi
measure cursor_top list_cursor.lua "$OUT/big/cursors-0.txt"
measure cursor_deep list_cursor.lua "$OUT/big/cursors-$DEEP.txt"
if missed "$cursor_deep_p99_ms <= 1.5 * $cursor_top_p99_ms"; then
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
deep_key=$(target/release/cursor decode users "$(head -n 1 "$OUT/big/cursors-$DEEP.txt")")
read -r deep_at deep_id <<<"$deep_key"
cursor_sql="EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT $columns FROM \"users\" WHERE \"users\".\"created_at\" <= '$deep_at' AND (\"users\".\"created_at\" < '$deep_at' OR \"users\".\"id\" < '$deep_id') ORDER BY \"users\".\"created_at\" DESC, \"users\".\"id\" DESC LIMIT 21;"
psql -q -X "$BIG_URL" >"$OUT/explain-cursor_deep.txt" 2>&1 <<<"$cursor_sql" || true
note_cmd "$cursor_sql
SQL"

say "4. POST /v1/orders against pgbench"
pgbench_run pg_orders "$MAIN_URL" place_order.sql -D users="$USERS" -D products="$PRODUCTS"
pgbench_run pg_orders_hot "$MAIN_URL" place_order.sql -D users="$USERS" -D products="$HOT_PRODUCTS"
start_server orders "$MAIN_URL"
measure orders post_order.lua "$OUT/main/users.txt" "$OUT/main/products.txt" 0
measure orders_hot post_order.lua "$OUT/main/users.txt" "$OUT/main/products.txt" "$HOT_PRODUCTS"
if [ "$((orders_errors + orders_hot_errors))" != 0 ]; then
  profile orders_hot post_order.lua "$OUT/main/users.txt" "$OUT/main/products.txt" "$HOT_PRODUCTS"
fi
server_memory rss_orders
stop_server

say "5. POST /v1/users"
start_server users "$MAIN_URL"
measure users_post post_user.lua "$RUN_ID"
server_memory rss_users
stop_server

aborted_total=$((pg_get_user_aborted + pg_orders_aborted + pg_orders_hot_aborted))
if [ "$aborted_total" = 0 ]; then
  record pg_aborted_note "no pgbench client aborted."
else
  record pg_aborted_note "**$aborted_total pgbench clients aborted** (see \`\$OUT/pgbench-*.txt\`)."
fi
record load_end "$(loadavg)"
# One INFO line per request adds up to gigabytes over a run.
gzip -f "$OUT"/server-*.log

say "report"
write_report
