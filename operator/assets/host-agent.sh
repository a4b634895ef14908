# tenant-operator host agent.
#
# This is the fixed body of the operator's SSM Command document. The operator prepends a header
# that sets AGENT_ACTION, AGENT_REVISION (both checked by SSM against the document's allowedPattern,
# and again below) and the constants PARAM_ROOT and AGENT_VERSION. Nothing a user controls is ever
# part of this text: desired state arrives through Parameter Store, read with the host's own role.
#
# stdout: exactly one compact JSON line (the report). Everything else goes to the host log.
# TENANT_HOST_ROOT prefixes every host path (empty on a real host; a sandbox in the simulator).
# TENANT_HOST_ADDR is the address the host's own ports answer on (127.0.0.1 on a real host).

set -uo pipefail
umask 077

ROOT="${TENANT_HOST_ROOT:-}"
ADDR="${TENANT_HOST_ADDR:-127.0.0.1}"
STATE="$ROOT/var/lib/tenant-operator"
LOGFILE="$ROOT/var/log/tenant-operator/agent.log"
mkdir -p "$STATE" "$(dirname "$LOGFILE")"

exec 3>&1 1>>"$LOGFILE" 2>&1

# tpl EXPR: a docker Go template, built at run time (SSM reserves double braces for parameters).
tpl() { printf '%s%s %s %s%s' '{' '{' "$1" '}' '}'; }
label() { docker inspect --format "$(tpl "index .Config.Labels \"$2\"")" "$1" 2>/dev/null; }

log() { printf '%s [%s] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$AGENT_ACTION" "$*"; }

# report STATUS [DETAIL]: the one line of stdout, then exit.
report() {
  local status="$1" detail="${2:-}"
  printf '{"v":1,"agent":"%s","action":"%s","revision":"%s","status":"%s","detail":"%s",%s}\n' \
    "$AGENT_VERSION" "$AGENT_ACTION" "$AGENT_REVISION" "$status" "$detail" "$(observe_json)" >&3
  if [ "$status" = "ok" ]; then exit 0; else exit 1; fi
}

# Values that reach the JSON report are checked against a strict pattern; anything else is
# reported as "invalid" so a hand-edited host can never break (or inject into) the report.
safe() {
  local value="$1" pattern="$2"
  if [[ "$value" =~ $pattern ]]; then printf '%s' "$value"; else printf 'invalid'; fi
}

ORG=""
if [ -r "$ROOT/etc/tenant-operator/org" ]; then ORG="$(head -c 64 "$ROOT/etc/tenant-operator/org" | tr -d '\n')"; fi
if ! [[ "$ORG" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]]; then ORG=""; fi

case "$AGENT_ACTION" in
  observe|apply|switch|prune) ;;
  *) AGENT_ACTION=invalid; AGENT_REVISION=""; report error bad-action ;;
esac
if ! [[ "$AGENT_REVISION" =~ ^[a-z0-9]{0,64}$ ]]; then AGENT_REVISION=""; report error bad-revision; fi


DIGEST_RE='^sha256:[a-f0-9]{64}$'
ENVREV_RE='^[a-f0-9]{16,64}$'
NAME_RE='^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$'
PORT_RE='^[0-9]{1,5}$'
REV_RE='^[a-z0-9]{1,64}$'

# slot_json SLOT: what docker says runs in that slot (found by label, not by name).
slot_json() {
  local slot="$1" id name running digest envrev port health path
  id="$(docker ps -a -q --filter "label=fleet.molecule.ai/slot=$slot" 2>/dev/null | head -n 1)"
  if [ -z "$id" ]; then printf 'null'; return; fi
  name="$(docker inspect --format "$(tpl .Name)" "$id" 2>/dev/null)"; name="${name#/}"
  running="$(docker inspect --format "$(tpl .State.Running)" "$id" 2>/dev/null)"
  digest="$(label "$id" fleet.molecule.ai/digest)"
  envrev="$(label "$id" fleet.molecule.ai/env-revision)"
  port="$(label "$id" fleet.molecule.ai/port)"
  path="$(label "$id" fleet.molecule.ai/health-path)"
  health=unknown
  if [ "$running" = "true" ] && [[ "$port" =~ $PORT_RE ]] && [[ "$path" =~ ^/[A-Za-z0-9._~/-]*$ ]]; then
    if curl -fsS -o /dev/null --max-time 3 --proto '=http' "http://$ADDR:$port$path"; then health=healthy; else health=unhealthy; fi
  fi
  [ "$running" = "true" ] || running=false
  printf '{"container":"%s","running":%s,"digest":"%s","envRevision":"%s","health":"%s"}' \
    "$(safe "$name" "$NAME_RE")" "$running" "$(safe "$digest" "$DIGEST_RE")" \
    "$(safe "$envrev" "$ENVREV_RE")" "$health"
}

# legacy_json: containers on the host that the operator did not start (today's hand-run app).
legacy_json() {
  local ids count=0
  ids="$(docker ps -q 2>/dev/null)"
  for id in $ids; do
    if [ -z "$(label "$id" fleet.molecule.ai/slot)" ]; then
      count=$((count + 1))
    fi
  done
  printf '%s' "$count"
}

observe_json() {
  local active applied managed=false
  active="$(cat "$STATE/active-slot" 2>/dev/null)"
  case "$active" in blue|green) ;; *) active="" ;; esac
  applied="$(cat "$STATE/applied-revision" 2>/dev/null)"
  if [ -n "$applied" ]; then managed=true; fi
  printf '"org":"%s","managed":%s,"applied":"%s","active":"%s","slots":{"blue":%s,"green":%s},"unmanagedContainers":%s' \
    "$ORG" "$managed" "$(safe "$applied" "$REV_RE")" "$active" "$(slot_json blue)" "$(slot_json green)" "$(legacy_json)"
}

# One command at a time on this host; a second waits for the first.
exec 9>"$STATE/lock"
if ! flock -w 900 9; then report error lock-timeout; fi
log "start revision=$AGENT_REVISION org=$ORG"

case "$AGENT_ACTION" in
  observe) report ok "" ;;
esac

# The actions below change the host; their implementation is in the part that follows.
