#!/usr/bin/env bash
# Run the example Compose stack for real, on a machine without a container registry.
#
#   sudo bash compose/smoke.sh        (root: it runs its own dockerd)
#
# What it does, each step bounded in time:
#   1. installs Debian's docker.io, docker-compose, debootstrap and iptables if missing;
#   2. starts its own dockerd on a private socket, data root and exec root (under
#      $MESHKIT_SMOKE_WORK), never touching a system Docker;
#   3. imports a base image made by `debootstrap --variant=minbase bookworm` from the
#      host's own Debian mirror (kept in the private data root between runs);
#   4. hands the image build the host's CA bundle (a TLS-inspecting proxy) and a
#      llama-cpp-python wheel built once on the host (kept in $MESHKIT_SMOKE_WORK/wheels);
#   5. builds and `up`s compose/docker-compose.yaml with the docker-compose.ci.yaml
#      override (the `ollama` service runs `python -m meshkit.local` on 11434) on
#      published ports $MESHKIT_SMOKE_GATEWAY_PORT and $MESHKIT_SMOKE_EXAMPLE_PORT;
#   6. waits for every health check, streams /api/generate through the gateway (from
#      the host) and through the example service (by service name, inside the network);
#   7. `down -v`, stops its dockerd by PID and undoes its host changes (iptables rules
#      and chains, docker0, ip_forward, files in compose/build-extra/) in a trap.
# It writes $MESHKIT_SMOKE_RESULT (JSON): tests/test_compose_smoke.py reads it.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${MESHKIT_SMOKE_WORK:-/var/tmp/meshkit-smoke}"
RESULT="${MESHKIT_SMOKE_RESULT:-$WORK/result.json}"
GATEWAY_PORT="${MESHKIT_SMOKE_GATEWAY_PORT:-18008}"
EXAMPLE_PORT="${MESHKIT_SMOKE_EXAMPLE_PORT:-18000}"
HEALTH_BOUND="${MESHKIT_SMOKE_HEALTH_SECONDS:-300}"
BASE_IMAGE=meshkit-base:bookworm
PROJECT=meshkit-smoke
LLAMA_CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
SOCK="$WORK/docker.sock"
DOCKER=(/usr/bin/docker -H "unix://$SOCK")
COMPOSE=(docker-compose -p "$PROJECT" -f "$ROOT/compose/docker-compose.yaml"
         -f "$ROOT/compose/docker-compose.ci.yaml")
EXTRA="$ROOT/compose/build-extra"
STARTED=$(date +%s)

say() { printf '[smoke %4ss] %s\n' "$(($(date +%s) - STARTED))" "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: it starts its own dockerd"
mkdir -p "$WORK" "$(dirname "$RESULT")"
rm -f "$RESULT"

# -- 1. packages --------------------------------------------------------------------------
missing=()
for pair in dockerd:docker.io docker-compose:docker-compose debootstrap:debootstrap \
            iptables:iptables; do
  command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin:/sbin"

# -- host state, restored by the trap ------------------------------------------------------
FORWARD_BEFORE=$(cat /proc/sys/net/ipv4/ip_forward)
DOCKER0_BEFORE=no
ip link show docker0 >/dev/null 2>&1 && DOCKER0_BEFORE=yes
FORWARD_POLICY=$(iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" {print $3}')
CHAINS_BEFORE=$( { iptables -S; iptables -t nat -S; } 2>/dev/null | awk '$1 == "-N" {print $2}' | sort -u)
DOCKERD_PID=""
STACK_UP=no
ADDED_FILES=()

undo_iptables() {
  local table line chain
  for table in nat filter; do
    # Rules in other chains that jump to or name Docker's (added by this dockerd).
    iptables -t "$table" -S 2>/dev/null | grep -E '^-A ' | grep -E 'DOCKER|docker0' \
      | grep -vE '^-A DOCKER' | while read -r line; do
        chain=$(awk '{print $2}' <<<"$line")
        grep -qx "$chain" <<<"$CHAINS_BEFORE" && [[ $chain == DOCKER* ]] && continue
        # shellcheck disable=SC2086  # the rule's own words, as iptables printed them
        iptables -t "$table" -D ${line#-A } 2>/dev/null || true
      done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" {print $2}' | grep '^DOCKER'); do
      grep -qx "$chain" <<<"$CHAINS_BEFORE" && continue
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" {print $2}' | grep '^DOCKER'); do
      grep -qx "$chain" <<<"$CHAINS_BEFORE" && continue
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  [ -n "$FORWARD_POLICY" ] && iptables -P FORWARD "$FORWARD_POLICY" 2>/dev/null || true
}

cleanup() {
  local status=$?
  set +e
  if [ "$STACK_UP" = yes ]; then
    say "down -v"
    timeout 120 "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1
  fi
  if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    say "stopping dockerd (pid $DOCKERD_PID)"
    kill -TERM "$DOCKERD_PID"
    for _ in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$DOCKERD_PID" 2>/dev/null && kill -KILL "$DOCKERD_PID"
    wait "$DOCKERD_PID" 2>/dev/null
  fi
  # Mounts a killed dockerd may leave behind (container layers, network namespaces).
  grep -F " $WORK/" /proc/mounts | awk '{print $2}' | sort -r | while read -r mnt; do
    umount -l "$mnt" 2>/dev/null
  done
  undo_iptables
  [ "$DOCKER0_BEFORE" = no ] && ip link show docker0 >/dev/null 2>&1 && ip link delete docker0
  echo "$FORWARD_BEFORE" > /proc/sys/net/ipv4/ip_forward
  for file in "${ADDED_FILES[@]}"; do rm -f "$file"; done
  if [ $status -ne 0 ] && [ ! -f "$RESULT" ]; then
    printf '{"status": "failed", "exit": %d, "log": "%s"}\n' "$status" "$WORK/dockerd.log" > "$RESULT"
  fi
  say "host restored (ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)); exit $status"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- 2. a private dockerd ------------------------------------------------------------------
say "starting dockerd on $SOCK"
dockerd --host "unix://$SOCK" --data-root "$WORK/data" --exec-root "$WORK/exec" \
  --pidfile "$WORK/dockerd.pid" --storage-driver overlay2 >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 1 120); do
  "${DOCKER[@]}" version >/dev/null 2>&1 && break
  kill -0 "$DOCKERD_PID" 2>/dev/null || die "dockerd exited: $(tail -5 "$WORK/dockerd.log")"
  sleep 0.5
done
"${DOCKER[@]}" version >/dev/null 2>&1 || die "dockerd did not answer within 60 s"
export DOCKER_HOST="unix://$SOCK"

# -- 3. the base image ---------------------------------------------------------------------
if ! "${DOCKER[@]}" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  mirror=$(awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' \
    /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || die "no Debian mirror found in the host's apt sources"
  say "debootstrap --variant=minbase bookworm (from the host's mirror; ~2-4 min)"
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,libgomp1 \
    bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || die "debootstrap failed: $(tail -5 "$WORK/debootstrap.log")"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "${DOCKER[@]}" import - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi
say "base image $BASE_IMAGE ready"

# -- 4. what the build gets from the host --------------------------------------------------
mkdir -p "$EXTRA/wheels"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$EXTRA/ca.crt"
  ADDED_FILES+=("$EXTRA/ca.crt")
fi
mkdir -p "$WORK/wheels"
if ! ls "$WORK"/wheels/llama_cpp_python-*.whl >/dev/null 2>&1; then
  version=$(python3 -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' \
    2>/dev/null || true)
  say "building the llama-cpp-python${version:+ $version} wheel once (pip's cache, else ~5-8 min)"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" timeout 1800 python3 -m pip wheel -q --no-deps \
    -w "$WORK/wheels" "llama-cpp-python${version:+==$version}" >"$WORK/wheel.log" 2>&1 \
    || die "llama-cpp-python wheel: $(tail -5 "$WORK/wheel.log")"
fi
for wheel in "$WORK"/wheels/llama_cpp_python-*.whl; do
  cp "$wheel" "$EXTRA/wheels/"
  ADDED_FILES+=("$EXTRA/wheels/$(basename "$wheel")")
done

# -- 5. build and up -----------------------------------------------------------------------
export MESHKIT_BASE_IMAGE="$BASE_IMAGE" MESHKIT_PUBLISH_PORT="$GATEWAY_PORT" \
  EXAMPLE_PUBLISH_PORT="$EXAMPLE_PORT"
cd "$ROOT/compose"
SOURCE_DIGEST=$(python3 "$ROOT/compose/digest.py")  # what the images are built from
say "building the images"
build_started=$(date +%s)
timeout 1800 "${COMPOSE[@]}" build >"$WORK/build.log" 2>&1 \
  || die "build failed: $(tail -20 "$WORK/build.log")"
BUILD_SECONDS=$(($(date +%s) - build_started))
say "built in ${BUILD_SECONDS} s; up"
STACK_UP=yes
up_started=$(date +%s)
timeout "$HEALTH_BOUND" "${COMPOSE[@]}" up -d >"$WORK/up.log" 2>&1 \
  || die "up failed: $(tail -20 "$WORK/up.log"; "${COMPOSE[@]}" logs --tail 30 2>&1)"

# -- 6. health, then stream ----------------------------------------------------------------
health() { "${DOCKER[@]}" inspect -f '{{.State.Health.Status}}' "$("${COMPOSE[@]}" ps -q "$1")"; }
deadline=$(($(date +%s) + HEALTH_BOUND))
for service in ollama gateway example; do
  until [ "$(health "$service" 2>/dev/null)" = healthy ]; do
    [ "$(date +%s)" -lt "$deadline" ] \
      || die "$service not healthy in ${HEALTH_BOUND} s: $("${COMPOSE[@]}" logs --tail 30 "$service" 2>&1)"
    sleep 2
  done
done
HEALTHY_SECONDS=$(($(date +%s) - up_started))
say "all healthy after ${HEALTHY_SECONDS} s"

# Reads an NDJSON stream, prints "<records> <text chunks> <answer>", fails unless it
# ended with done:true after at least two text chunks.
COUNT='
import json, sys
records = [json.loads(line) for line in sys.stdin if line.strip()]
text = [r.get("response", "") for r in records if r.get("response")]
assert records and records[-1].get("done") is True, f"no final done record: {records[-3:]}"
assert len(text) >= 2, f"not streamed: {records}"
print(len(records), len(text), json.dumps("".join(text)))
'
BODY='{"model": "gemma-3-270m", "prompt": "Why is the sky blue? Answer in one sentence.", "options": {"num_predict": 32}}'
say "streaming /api/generate through the gateway (127.0.0.1:$GATEWAY_PORT)"
GATEWAY_STREAM=$(curl -sS -N --max-time 180 "http://127.0.0.1:$GATEWAY_PORT/api/generate" \
  -d "$BODY" | python3 -c "$COUNT") || die "gateway stream"
say "gateway: $GATEWAY_STREAM"
say "streaming /api/generate through the example service (http://example:8000, in the network)"
GET_INSIDE='
import sys, urllib.request
request = urllib.request.Request("http://example:8000/api/generate", data=sys.argv[1].encode())
with urllib.request.urlopen(request, timeout=180) as response:
    for line in response:
        sys.stdout.write(line.decode())
'
EXAMPLE_STREAM=$("${COMPOSE[@]}" exec -T gateway python -c "$GET_INSIDE" "$BODY" \
  | python3 -c "$COUNT") || die "example stream"
say "example: $EXAMPLE_STREAM"

python3 - "$RESULT" "$GATEWAY_STREAM" "$EXAMPLE_STREAM" <<EOF
import json, sys, time
def parse(line):
    records, chunks, answer = line.split(" ", 2)
    return {"records": int(records), "chunks": int(chunks), "answer": json.loads(answer)}
json.dump({
    "status": "passed",
    "source": "$SOURCE_DIGEST",
    "commit": "$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)",
    "finished": time.time(),
    "build_seconds": $BUILD_SECONDS,
    "healthy_seconds": $HEALTHY_SECONDS,
    "total_seconds": $(($(date +%s) - STARTED)),
    "gateway": parse(sys.argv[2]),
    "example": parse(sys.argv[3]),
}, open(sys.argv[1], "w"), indent=2)
EOF
say "passed; result in $RESULT"
