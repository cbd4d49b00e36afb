#!/usr/bin/env bash
# Builds PgBouncer 1.24.1 from Debian 13's source package into PREFIX (default
# /opt/pgbouncer-1.24) and leaves it there; does nothing when PREFIX/bin/pgbouncer is already 1.24.1.
#
#   sudo scripts/pgbouncer-1.24.sh [PREFIX]
#
# The tests find /opt/pgbouncer-1.24/bin/pgbouncer by themselves; for another PREFIX, export
# PGBOUNCER_1_24=PREFIX/bin/pgbouncer.
#
# The tests run the service behind it in transaction mode: the driver names every parameterised
# statement, and only PgBouncer 1.21 and later (`max_prepared_statements`) carry named statements
# across server connections. Debian 12 packages 1.18, so 1.24 is built from trixie's source. The
# source is fetched with a sources list and an apt state of its own, so the machine's apt
# configuration is left as it was. Needs root (apt-get install of the build dependencies).
set -euo pipefail

VERSION=1.24.1
prefix=${1:-/opt/pgbouncer-1.24}
binary=$prefix/bin/pgbouncer

if [ -x "$binary" ] && "$binary" --version 2>/dev/null | grep -q "PgBouncer $VERSION"; then
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
build_deps=(build-essential dpkg-dev pkg-config libevent-dev libssl-dev)
if ! dpkg -s "${build_deps[@]}" >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${build_deps[@]}" >/dev/null
fi

# The Debian mirror the machine already uses (a local mirror or proxy keeps working), else the
# default one.
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
  2>/dev/null | grep -v '^[[:space:]]*#' | grep -Eo 'https?://[^ ]+/debian/?( |$)' | head -n 1 \
  | tr -d ' ' || true)
mirror=${mirror:-http://deb.debian.org/debian}
mirror=${mirror%/}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
  >"$work/sources.list"
apt_private=(
  -o "Dir::Etc::sourcelist=$work/sources.list"
  -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::lists=$work/lists"
  -o "Dir::Cache=$work/cache"
)
apt-get "${apt_private[@]}" update -qq
(cd "$work/src" && apt-get "${apt_private[@]}" source -qq "pgbouncer" >/dev/null)

source_dir=$work/src/pgbouncer-$VERSION
if [ ! -d "$source_dir" ]; then
  echo "trixie's pgbouncer source is not $VERSION: $(ls "$work/src")" >&2
  exit 1
fi
cd "$source_dir"
# c-ares, PAM and systemd are not needed by a pooler that the tests start themselves on loopback.
./configure --quiet --prefix="$prefix" --without-cares --without-pam --without-systemd
make -s -j"$(nproc)" >/dev/null
make -s install >/dev/null
"$binary" --version
