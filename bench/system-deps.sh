#!/usr/bin/env bash
# Debian packages the benchmarks need (wrk: the HTTP load generator). Installs them when run as
# root; otherwise says what is missing.
set -euo pipefail
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
else
    echo "benchmarks need these Debian packages: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
fi
