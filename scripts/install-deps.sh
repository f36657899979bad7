#!/usr/bin/env bash
# Installs the Debian packages zgate needs that are not there yet.
#   scripts/install-deps.sh build   what building needs
#   scripts/install-deps.sh test    building plus what the tests start (PostgreSQL, Redis, python3)
#   scripts/install-deps.sh bench   building plus the load generator and nginx for comparison
# Does nothing (and needs no root) when everything is installed already.
set -euo pipefail

build=(build-essential cmake pkg-config ca-certificates
       libczmq-dev libzmq3-dev libmicrohttpd-dev libcurl4-openssl-dev libyaml-dev
       libpq-dev libhiredis-dev libmsgpack-dev
       libssl-dev libsodium-dev libmimalloc-dev)
test=(python3 procps postgresql redis-server nginx-light openssl)
bench=(wrk nginx-light util-linux procps python3)

wanted=("${build[@]}")
case "${1:-build}" in
  build) ;;
  test)  wanted+=("${test[@]}") ;;
  bench) wanted+=("${bench[@]}") ;;
  *) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
esac

missing=()
for pkg in "${wanted[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "zgate needs these Debian packages: ${missing[*]}" >&2
  echo "install them as root: apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# Services installed here must not start on their own: the tests start
# their own servers on free ports in temporary directories.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
fi
trap '[ $created_policy -eq 1 ] && rm -f "$policy"' EXIT
apt-get install -y -q --no-install-recommends "${missing[@]}"
