# Shared helpers for scripts/test, scripts/quickstart and .ci/run. Source it; do not run it.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CHAT_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export DEBIAN_FRONTEND=noninteractive

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

_apt_updated=0
# apt_install PACKAGE...: install Debian packages when we are root; otherwise name the command.
apt_install() {
    if ! is_root || ! command -v apt-get >/dev/null 2>&1; then
        die "missing system packages; run: sudo apt-get update && sudo apt-get install -y $*"
    fi
    if [ "$_apt_updated" -eq 0 ]; then
        log "apt-get update (up to a minute, quiet meanwhile)"
        apt-get update -qq >/dev/null
        _apt_updated=1
    fi
    log "apt-get install $*"
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

check_python() {
    command -v "$PYTHON" >/dev/null 2>&1 || apt_install python3 python3-venv
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is $("$PYTHON" -V 2>&1); Python 3.11 or newer is needed"
}

# ensure_venv: create $VENV when it is missing or broken (Debian ships venv separately).
ensure_venv() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1; then
        return
    fi
    check_python
    log "creating virtualenv $VENV"
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        if is_root && command -v apt-get >/dev/null 2>&1; then
            apt_install python3-venv
            "$PYTHON" -m venv "$VENV"
        else
            die "'$PYTHON -m venv' failed; run: sudo apt-get install -y python3-venv"
        fi
    fi
}

# pip_install REQUIREMENTS_FILE: install pinned requirements into $VENV (a no-op when satisfied).
pip_install() {
    log "pip install -r $1 (about a minute the first time, quiet meanwhile; seconds after that)"
    "$VENV/bin/python" -m pip install --quiet -r "$ROOT/$1"
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
