#!/usr/bin/env bash
# Regenerates entity/src with sea-orm-cli from a freshly migrated PostgreSQL database, so the
# entities are always exactly what the generator makes of the migrations.
#
#   scripts/generate-entities.sh            # rewrite entity/src
#   scripts/generate-entities.sh --check    # fail if entity/src differs from the generator's output
#
# PG_ADMIN_URL names a server where a scratch database may be created
# (default postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."

SEA_ORM_CLI_VERSION=2.0.4
admin_url=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
check=false
[ "${1:-}" = "--check" ] && check=true

if ! sea-orm-cli --version 2>/dev/null | grep -q " $SEA_ORM_CLI_VERSION"; then
  echo "installing sea-orm-cli $SEA_ORM_CLI_VERSION" >&2
  cargo install sea-orm-cli --version "$SEA_ORM_CLI_VERSION" --locked --quiet
fi

db="storefront_entities_$(date +%s)_$$"
psql -q -v ON_ERROR_STOP=1 "$admin_url" -c "CREATE DATABASE $db" >/dev/null
trap 'psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null' EXIT
db_url="${admin_url%/*}/$db"

DATABASE_URL="$db_url" cargo run --quiet -p migration -- up >/dev/null

out=entity/src
$check && out=$(mktemp -d)
sea-orm-cli generate entity --database-url "$db_url" --output-dir "$out" --lib >/dev/null

if $check; then
  if ! diff -ru entity/src "$out"; then
    echo "entity/src differs from what sea-orm-cli generates from the migrations:" >&2
    echo "run scripts/generate-entities.sh and commit the result" >&2
    exit 1
  fi
  rm -rf "$out"
  echo "entities match the migrations"
fi
