#!/usr/bin/env bash
# What `make test` needs from Debian beyond the venv (PostgreSQL's server is on the image; the Node packages come
# from `npm ci`): redis-server (the Redis tests start their own) and chromium (the playground's browser tests drive
# it through Playwright). Missing ones are installed with apt-get when this runs as root; otherwise it stops at
# once with one line naming the packages (exit 1). The tests never skip for want of them.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "make test needs the Debian packages ${missing[*]}: install them (sudo apt-get install -y ${missing[*]}) or run make test as root" >&2
    exit 1
fi
echo "make test: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update && apt-get install -y "${missing[@]}"
