#!/usr/bin/env bash
# Generates typed clients from the served OpenAPI document, as an API consumer would, and drives the
# live service with them: openapi-python-client and openapi-typescript must generate without a
# single warning, both example programs (examples/python, examples/typescript) must type-check
# against what was generated (mypy --strict, tsc --noEmit) and must walk a customer's path on a
# scratch SQLite database.
#
#   scripts/clients.sh
#
# The generators are pinned in examples/python/requirements.txt and
# examples/typescript/package-lock.json. The Python ones live in a virtualenv at CLIENTS_VENV
# (default ~/.cache/storefront/clients-venv), made again whenever the requirements change.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${CLIENTS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/storefront/clients-venv}
requirements=examples/python/requirements.txt
if ! cmp -s "$requirements" "$venv/requirements.txt"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi
cargo build --quiet -p api

work=$(mktemp -d)
server=""
cleanup() {
  local status=$?
  if [ "$status" -ne 0 ] && [ -s "$work/server.log" ]; then
    echo "--- server log" >&2
    tail -n 50 "$work/server.log" >&2
  fi
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# Prints a generator's output and fails when it said anything beyond the lines it always says.
quiet_or_fail() { # quiet_or_fail <generator> <log> <pattern of the expected lines>
  if grep -Ev "$3" "$2" | grep -q '[^[:space:]]'; then
    echo "$1 did not generate cleanly:" >&2
    cat "$2" >&2
    exit 1
  fi
}

export ADMIN_EMAIL=admin@example.com
export ADMIN_PASSWORD="clients-$$-$RANDOM-admin"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export STOREFRONT_URL="http://127.0.0.1:$port"
DATABASE_URL="sqlite://$work/clients.db?mode=rwc" PORT="$port" RUST_LOG=warn \
  "${CARGO_TARGET_DIR:-target}/debug/api" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
  curl -fsS "$STOREFRONT_URL/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$STOREFRONT_URL/openapi.json" -o "$work/openapi.json"

echo "== Python: openapi-python-client"
mkdir -p "$work/python"
PATH="$venv/bin:$PATH" openapi-python-client generate --path "$work/openapi.json" \
  --config examples/python/openapi-python-client.yaml --meta none \
  --output-path "$work/python/storefront_client" --fail-on-warning >"$work/python.log" 2>&1 ||
  { cat "$work/python.log" >&2; exit 1; }
quiet_or_fail openapi-python-client "$work/python.log" '^Generating '
MYPYPATH="$work/python" "$venv/bin/mypy" --strict --follow-imports=silent \
  --cache-dir "$work/mypy-cache" examples/python/walk.py
PYTHONPATH="$work/python" PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" examples/python/walk.py

echo "== TypeScript: openapi-typescript, openapi-fetch"
mkdir -p "$work/typescript/src"
cp examples/typescript/package.json examples/typescript/package-lock.json \
  examples/typescript/tsconfig.json "$work/typescript/"
cp examples/typescript/src/*.ts "$work/typescript/src/"
rm -f "$work/typescript/src/schema.d.ts"
(
  cd "$work/typescript"
  npm ci --silent --prefer-offline --no-audit --no-fund
  status=0
  npx --no-install openapi-typescript "$work/openapi.json" -o src/schema.d.ts \
    >"$work/typescript.log" 2>&1 || status=$?
  [ "$status" -eq 0 ] || { cat "$work/typescript.log" >&2; exit 1; }
  quiet_or_fail openapi-typescript "$work/typescript.log" '^✨ openapi-typescript |^🚀 '
  npx --no-install tsc --noEmit
  npx --no-install tsc
  node dist/walk.js
)

echo "== both clients walked the customer's path"
