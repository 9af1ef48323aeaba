#!/usr/bin/env bash
# The Debian packages a command needs, installed when missing (as root, with apt-get, as CI does);
# otherwise the one command to run is printed and the make target stops.
#   tools/system_packages.sh postgresql [chromium] [redis]
set -euo pipefail

missing=()
for need in "$@"; do
  case "$need" in
    postgresql) ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql) ;;
    chromium) command -v chromium >/dev/null 2>&1 || missing+=(chromium) ;;
    redis) command -v redis-server >/dev/null 2>&1 || missing+=(redis-server) ;;
    *) echo "tools/system_packages.sh: unknown package '$need'" >&2; exit 2 ;;
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  # The Debian postgresql package starts a cluster of its own on 5432; the demo and the tests use
  # their own clusters on free ports, so it is left as it is.
else
  echo "missing system packages: ${missing[*]}. Install them, then run make again:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
