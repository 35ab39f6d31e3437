#!/usr/bin/env bash
# Install what the benchmark needs beyond the project's own dependencies:
#   nginx (the static server), wrk (a raw-throughput load client) and tcpdump (scale.py's request
#   arrivals) from Debian's packages,
#   Scrapy and psutil into the project's virtualenv.
# Usage: bash bench/setup.sh [--no-apt] [--no-scrapy]      (apt needs root or sudo)
# Every part is optional: bench/run.py skips Scrapy and falls back to a Python server
# when they are missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${VENV:-$here/../.venv}"
apt=1
scrapy=1
for arg in "$@"; do
  case "$arg" in
    --no-apt) apt=0 ;;
    --no-scrapy) scrapy=0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

if [[ $apt == 1 ]]; then
  missing=()
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v tcpdump >/dev/null || missing+=(tcpdump)
  if (( ${#missing[@]} )); then
    sudo_cmd=""
    [[ $(id -u) == 0 ]] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
  fi
  echo "nginx, wrk and tcpdump: installed"
fi

pip_args=("psutil>=5.9")
[[ $scrapy == 1 ]] && pip_args+=("scrapy>=2.13")
"$venv/bin/python" -m pip install -q "${pip_args[@]}"
"$venv/bin/python" - <<'PY'
import importlib.util
for name in ("psutil", "scrapy", "aiohttp", "selectolax", "protego"):
    print(f"{name}: {'ok' if importlib.util.find_spec(name) else 'missing'}")
PY
