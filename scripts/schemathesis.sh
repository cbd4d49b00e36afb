#!/usr/bin/env bash
# Fuzzes the running service against its own OpenAPI document with schemathesis, in positive and
# negative mode, and fails on any server error or any answer the document does not describe.
#
#   scripts/schemathesis.sh sqlite      # a scratch SQLite file
#   scripts/schemathesis.sh postgres    # a scratch database on PG_ADMIN_URL
#                                       # (default postgres://postgres@127.0.0.1:5432/postgres)
# MAX_EXAMPLES (default 60) bounds the examples per operation.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
backend=${1:-sqlite}
admin_url=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}

if ! st --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi
cargo build --quiet -p api

work=$(mktemp -d)
db=""
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  [ -n "$db" ] && psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

case "$backend" in
  sqlite) url="sqlite://$work/fuzz.db?mode=rwc" ;;
  postgres)
    db="storefront_fuzz_$(date +%s)_$$"
    psql -q -v ON_ERROR_STOP=1 "$admin_url" -c "CREATE DATABASE $db" >/dev/null
    url="${admin_url%/*}/$db" ;;
  *) echo "usage: $0 sqlite|postgres" >&2; exit 2 ;;
esac

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin_email=fuzz-admin@storefront.test
admin_password=fuzz-admin-password
DATABASE_URL="$url" PORT="$port" RUST_LOG=warn ADMIN_EMAIL=$admin_email ADMIN_PASSWORD=$admin_password \
  "${CARGO_TARGET_DIR:-target}/debug/api" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.1
done

# An admin's token reaches every operation; logging it out would end the run's reach, so the
# logout operation is left out (its behaviour is covered by the integration tests).
token=$(curl -fsS -XPOST "http://127.0.0.1:$port/v1/sessions" -H 'content-type: application/json' \
  -d "{\"email\":\"$admin_email\",\"password\":\"$admin_password\"}" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')

fuzz() {
  st run "http://127.0.0.1:$port/openapi.json" \
    --header "Authorization: Bearer $token" \
    --exclude-operation-id logout \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --mode all \
    --max-examples "${MAX_EXAMPLES:-60}" \
    --generation-deterministic \
    --request-timeout 10 \
    --workers 1 \
    --suppress-health-check all \
    --no-color 2>&1 | tee "$work/st.log"
}

if ! fuzz; then
  # CPython 3.11 can raise this SystemError while the fuzzer builds test cases on several
  # threads (python/cpython#106905): a fault of the interpreter, not a finding about the service.
  # One worker keeps it away (two workers hit it twice in a row); should it still come, the run
  # is repeated once. Any other failure stands.
  if grep -q "AST constructor recursion depth mismatch" "$work/st.log"; then
    echo "--- the fuzzer's interpreter failed on its own (python/cpython#106905); running it again"
    fuzz && exit 0
  fi
  echo "--- server log"
  tail -n 50 "$work/server.log"
  exit 1
fi
