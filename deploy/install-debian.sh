#!/usr/bin/env bash
# Set up natkit on Debian 12 (as root): coturn and the Python environment in ./.venv.
#   bash deploy/install-debian.sh            # coturn + natkit
#   bash deploy/install-debian.sh --test     # + test dependencies
#   bash deploy/install-debian.sh --docker   # + docker.io and docker-compose (docker backend, rendered compose files)
set -euo pipefail
cd "$(dirname "$0")/.."
apt=1 test=0 docker=0
for arg in "$@"; do
    case "$arg" in
        --no-apt) apt=0 ;;
        --test) test=1 ;;
        --docker) docker=1 ;;
        *) echo "unknown option: $arg" >&2; exit 2 ;;
    esac
done
if [ "$apt" = 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    pkgs="coturn python3-venv python3-pip iproute2 nftables"
    [ "$docker" = 1 ] && pkgs="$pkgs docker.io docker-compose"
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "$test" = 1 ]; then
    .venv/bin/python -m pip install -q '.[test]'
else
    .venv/bin/python -m pip install -q .
fi
echo "natkit installed: $(.venv/bin/natkit --help >/dev/null && echo .venv/bin/natkit)"
