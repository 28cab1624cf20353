#!/usr/bin/env bash
# Create the peers' virtualenvs under benchmarks/.venvs/ (git-ignored) and check the
# Debian tools the harness drives. Never touches the main Python environment.
# Usage: bash benchmarks/setup.sh [opea] [litellm]   (no argument = both)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venvs="$here/.venvs"
python="${PYTHON:-python3}"
opea_pin="opea-comps==1.5"
litellm_pin="litellm[proxy]==1.108.7"

want=("$@")
[ ${#want[@]} -eq 0 ] && want=(opea litellm)

need_debian() {
  local missing=()
  command -v nginx >/dev/null || missing+=(nginx)
  command -v wrk >/dev/null || missing+=(wrk)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
  fi
}

make_venv() {  # name, pip requirement...
  local name="$1"; shift
  local dir="$venvs/$name"
  if [ ! -x "$dir/bin/python" ]; then
    "$python" -m venv "$dir"
    "$dir/bin/pip" install -q --upgrade pip
  fi
  "$dir/bin/pip" install -q "$@" 2> >(grep -v "is ignored: it is neither" >&2)
  echo "venv $name ready: $("$dir/bin/pip" freeze | grep -iE "^(${name//-/[-_]})" || true)"
}

need_debian
mkdir -p "$venvs"
for w in "${want[@]}"; do
  case "$w" in
    opea) make_venv opea "$opea_pin" ;;
    litellm) make_venv litellm "$litellm_pin" ;;
    *) echo "unknown peer: $w" >&2; exit 2 ;;
  esac
done
