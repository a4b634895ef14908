#!/usr/bin/env bash
# Runs the host agent's own functions over many generated cases in one bash (tests/e2e/agent.rs).
#
#   agent-harness.sh LIB CASES
#
# LIB holds the functions and patterns taken from the text of operator/assets/host-agent.sh, as
# they are (read_org, fetch_revision, load_revision, start_slot and what they call). Each directory
# under CASES is one host: `host/` its file system (with its org file and the agent's directories),
# `param` and `value` the one parameter Parameter Store holds, `digest` the digest the command names. The agent's path of an apply is followed:
# read_org, fetch_revision, load_revision, start_slot. `aws` and `docker` are functions here that
# record what the agent asked of them into the case's directory (`aws-name`; `docker-args`,
# NUL-separated; `docker-env`, the docker CLI's environment as `env -0` prints it; `docker-envfile`,
# a copy of the env file it was given); `outcome` says how far the case got. Nothing is judged here.
set -uo pipefail
LIB="$1"
CASES="$2"

# The agent's constants (the operator's header sets these on a real host); used by LIB's functions.
# shellcheck disable=SC2034
{ PARAM_ROOT=/tenant-operator; AGENT_ACTION=apply; ADDR=127.0.0.1; }
# shellcheck source=/dev/null
. "$LIB"

# aws ssm get-parameter --with-decryption --name NAME --query '[Parameter.Version,Parameter.Value]'
#   --output text: the version, a tab, the value.
aws() {
  local name=""
  while [ $# -gt 0 ]; do
    if [ "$1" = --name ]; then name="$2"; shift; fi
    shift
  done
  printf '%s' "$name" > "$CASE_DIR/aws-name"
  local stored
  read -r stored < "$CASE_DIR/param"
  [ "$name" = "$stored" ] || { echo "ParameterNotFound" >&2; return 254; }
  printf '1\t'
  cat "$CASE_DIR/value"
}

# docker: nothing runs on these hosts; `run` is recorded as the docker CLI would receive it, as a
# program on PATH (the agent starts it through `env`) and as a function for its other calls.
BIN="$(mktemp -d)"
trap 'rm -rf "$BIN"' EXIT
cat > "$BIN/docker" <<'RECORDER'
#!/usr/bin/env bash
[ "$1" = run ] || exit 0
env -0 > "$CASE_DIR/docker-env"
printf '%s\0' "$@" > "$CASE_DIR/docker-args"
previous=""
for arg in "$@"; do
  if [ "$previous" = --env-file ]; then cp "$arg" "$CASE_DIR/docker-envfile"; fi
  previous="$arg"
done
RECORDER
chmod +x "$BIN/docker"
PATH="$BIN:$PATH"
docker() {
  [ "$1" = run ] || return 0
  "$BIN/docker" "$@"
}
export CASE_DIR

for CASE_DIR in "$CASES"/*/; do
  CASE_DIR="${CASE_DIR%/}"
  ROOT="$CASE_DIR/host"
  # shellcheck disable=SC2034 # read by the agent's functions
  STATE="$ROOT/var/lib/tenant-operator"
  LOGFILE="$ROOT/agent.log"
  WORK="$ROOT/work"
  ORG="$(read_org 2>>"$LOGFILE")"
  printf '%s' "$ORG" > "$CASE_DIR/read-org"
  read -r R_DIGEST < "$CASE_DIR/digest"
  if ! fetch_revision "$WORK/desired"; then echo fetch-failed > "$CASE_DIR/outcome"; continue; fi
  if ! load_revision "$WORK/desired"; then echo load-failed > "$CASE_DIR/outcome"; continue; fi
  # As the agent does: the revision applied is the base the parameter names, then the digest's start.
  rev="$R_BASE${R_DIGEST:7:32}"
  printf '%s' "$rev" > "$CASE_DIR/applied"
  start_slot "$rev" "$WORK/desired" blue >>"$LOGFILE" 2>&1
  echo "start $?" > "$CASE_DIR/outcome"
done
