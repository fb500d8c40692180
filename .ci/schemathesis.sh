#!/usr/bin/env bash
# The API against its own OpenAPI document, on a live `gridex demo` (web/tests/openapi):
#  1. a client generated from the served document (openapi-python-client) places a signed order as a
#     demo household and reads a settled slot's report with the demo utility's key;
#  2. schemathesis tests every operation (valid and invalid data) as a household and as the utility.
# Needs target/debug/gridex (cargo build -p web --bin gridex). GRIDEX_EXAMPLES bounds schemathesis's
# examples per operation (default 25). Run from anywhere: bash .ci/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."
started_s=$(date +%s)

# Pinned: these versions install and pass here (late 2026).
python3 -m pip install --quiet --disable-pip-version-check \
  schemathesis==4.32.5 openapi-python-client==0.29.1 pynacl==1.6.2 pytest==9.2.0

bin=${GRIDEX_BIN:-$PWD/target/debug/gridex}
[ -x "$bin" ] || { echo "missing $bin: cargo build -p web --bin gridex first" >&2; exit 1; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$(mktemp -d)
log="$data/demo.log"
# 60×: a 15-minute slot every 15 s, so a slot is settled within about a minute for the report.
"$bin" demo --homes 4 --speed 60 --port "$port" --data-dir "$data" >"$log" 2>&1 &
demo=$!
stop() {
  kill -INT "$demo" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$demo" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$demo" 2>/dev/null || true
  rm -rf "$data"
}
trap stop EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 1 120); do
  curl -sf "$base/healthz" >/dev/null 2>&1 && break
  kill -0 "$demo" 2>/dev/null || { cat "$log" >&2; echo "gridex demo exited" >&2; exit 1; }
  sleep 0.5
done
curl -sf "$base/healthz" >/dev/null || { cat "$log" >&2; echo "gridex demo did not answer /healthz" >&2; exit 1; }

export GRIDEX_BASE="$base"
# The demo's keys: two households (schemathesis signs as one, the generated client as another, so
# their nonces and orders never meet) and the demo utility's API key.
GRIDEX_TRADER_SEED=$(cat "$data/keys/home-000-account.key")
GRIDEX_CLIENT_SEED=$(cat "$data/keys/home-003-account.key")
GRIDEX_UTILITY_KEY=$(cat "$data/utility-api.key")
export GRIDEX_TRADER_SEED GRIDEX_CLIENT_SEED GRIDEX_UTILITY_KEY
export GRIDEX_EXAMPLES="${GRIDEX_EXAMPLES:-25}"
# The generated client first: schemathesis then registers zones and sets tariffs at random.
(cd web/tests/openapi && python3 -m pytest -p no:cacheprovider -q test_generated_client.py test_schemathesis.py)
echo "schemathesis and the generated client: $(( $(date +%s) - started_s )) s"
