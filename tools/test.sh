#!/usr/bin/env bash
# The test command: provides `redis-server` (the fleet tests start real ones), then runs
# `cargo test --all-features` with any arguments given, e.g. `tools/test.sh --test redis`.
#
# When `redis-server` is not on PATH it is installed with the system's package manager
# (apt-get, dnf, yum, apk, pacman, zypper or brew), through sudo when not root and sudo exists.
# That first run needs the package registry; later runs are offline.
set -euo pipefail
cd "$(dirname "$0")/.."

install_redis() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        elif ! command -v brew >/dev/null 2>&1; then
            echo "tools/test.sh: redis-server is missing and installing it needs root (no sudo found)." >&2
            echo "Install Redis (the package that provides redis-server) and run this again." >&2
            exit 1
        fi
    fi
    echo "tools/test.sh: redis-server not found; installing it with the system package manager" >&2
    if command -v apt-get >/dev/null 2>&1; then
        ${sudo[@]+"${sudo[@]}"} apt-get update -qq
        DEBIAN_FRONTEND=noninteractive ${sudo[@]+"${sudo[@]}"} apt-get install -y -qq redis-server
    elif command -v dnf >/dev/null 2>&1; then
        ${sudo[@]+"${sudo[@]}"} dnf install -y redis
    elif command -v yum >/dev/null 2>&1; then
        ${sudo[@]+"${sudo[@]}"} yum install -y redis
    elif command -v apk >/dev/null 2>&1; then
        ${sudo[@]+"${sudo[@]}"} apk add --no-cache redis
    elif command -v pacman >/dev/null 2>&1; then
        ${sudo[@]+"${sudo[@]}"} pacman -S --noconfirm --needed redis
    elif command -v zypper >/dev/null 2>&1; then
        ${sudo[@]+"${sudo[@]}"} zypper --non-interactive install redis
    elif command -v brew >/dev/null 2>&1; then
        brew install redis
    else
        echo "tools/test.sh: redis-server is missing and no known package manager was found" >&2
        echo "(apt-get, dnf, yum, apk, pacman, zypper, brew). Install Redis and run this again." >&2
        exit 1
    fi
    # The Debian package starts a system-wide server; the tests start their own on free ports
    # and do not need it.
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "tools/test.sh: the package was installed but redis-server is still not on PATH" >&2
        exit 1
    fi
}

command -v redis-server >/dev/null 2>&1 || install_redis
redis-server --version >&2
exec cargo test --all-features "$@"
