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
SMOKE_NAME_RE='^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'
SMOKE_PATH_RE='^/[A-Za-z0-9._~!$&()*+,;=:@%/?'"'"'-]{0,1023}$'

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

# --- desired state ----------------------------------------------------------------------

b64d() { printf '%s' "$1" | base64 -d; }

# fetch_revision REV FILE: the revision's parameter, read with this host's own role.
fetch_revision() {
  [ -n "$ORG" ] || return 1
  aws ssm get-parameter --with-decryption --name "$PARAM_ROOT/$ORG/revisions/$1" \
    --query Parameter.Value --output text > "$2" 2>>"$LOGFILE"
}

# load_revision FILE: parses the line format into R_* variables and the RUN_ARGS / ENV_KEYS arrays.
# Every user-controlled field is base64 and decoded into a single argv element: nothing is eval'd.
load_revision() {
  local file="$1" kind a b c
  R_IMAGE=""; R_DIGEST=""; R_ENVREV=""; R_NAME=""; R_PORT_BLUE=""; R_PORT_GREEN=""; R_PORT_ROUTING=""
  R_CPORT=""; R_HEALTH="/health"; R_TIMEOUT=60; R_STRATEGY=inplace; R_KEEPWARM=600; R_RESTART=unless-stopped
  RUN_ARGS=(); ENV_KEYS=()
  head -n 1 "$file" | grep -qx 'tenant-operator-revision v1' || return 1
  while IFS=' ' read -r kind a b c; do
    case "$kind" in
      image) R_IMAGE="$(b64d "$a")" ;;
      digest) [[ "$a" =~ $DIGEST_RE ]] && R_DIGEST="$a" ;;
      envrev) [[ "$a" =~ $ENVREV_RE ]] && R_ENVREV="$a" ;;
      name) [[ "$a" =~ $NAME_RE ]] && R_NAME="$a" ;;
      ports) R_PORT_BLUE="$a"; R_PORT_GREEN="$b"; R_PORT_ROUTING="$c" ;;
      cport) R_CPORT="$a" ;;
      health) R_HEALTH="$(b64d "$a")" ;;
      timeout) [[ "$a" =~ ^[0-9]{1,5}$ ]] && R_TIMEOUT="$a" ;;
      strategy) case "$a" in inplace|bluegreen) R_STRATEGY="$a" ;; esac ;;
      keepwarm) [[ "$a" =~ ^[0-9]{1,6}$ ]] && R_KEEPWARM="$a" ;;
      restart) case "$a" in no|always|unless-stopped|on-failure) R_RESTART="$a" ;; esac ;;
      network) RUN_ARGS+=(--network "$(b64d "$a")") ;;
      dockersock) [ "$a" = 1 ] && RUN_ARGS+=(-v /var/run/docker.sock:/var/run/docker.sock) ;;
      vol) if [ "$c" = ro ]; then RUN_ARGS+=(-v "$(b64d "$a"):$(b64d "$b"):ro"); else RUN_ARGS+=(-v "$(b64d "$a"):$(b64d "$b")"); fi ;;
      label) RUN_ARGS+=(--label "$(b64d "$a")=$(b64d "$b")") ;;
      host) RUN_ARGS+=(--add-host "$(b64d "$a"):$(b64d "$b")") ;;
      env) ENV_KEYS+=("$a") ;;
    esac
  done < "$file"
  [ -n "$R_IMAGE" ] && [ -n "$R_DIGEST" ] && [ -n "$R_NAME" ] || return 1
  [[ "$R_PORT_BLUE" =~ $PORT_RE && "$R_PORT_GREEN" =~ $PORT_RE && "$R_PORT_ROUTING" =~ $PORT_RE && "$R_CPORT" =~ $PORT_RE ]] || return 1
  [[ "$R_HEALTH" =~ ^/[A-Za-z0-9._~/-]*$ ]] || return 1
  return 0
}

slot_port() { if [ "$1" = green ]; then printf '%s' "$R_PORT_GREEN"; else printf '%s' "$R_PORT_BLUE"; fi; }
slot_container() { docker ps -a -q --filter "label=fleet.molecule.ai/slot=$1" 2>/dev/null | head -n 1; }

# multiline_unsafe NAME: names under which a multi-line value cannot be passed. Such a value reaches
# docker through the CLI's own environment (`-e KEY`), so the name must mean nothing to this shell
# (readonly, dynamic or behaviour-changing variables) nor to the docker CLI and what it loads.
multiline_unsafe() {
  case "$1" in
    _|PATH|HOME|IFS|ENV|CDPATH|GLOBIGNORE|SHELLOPTS|BASHOPTS|POSIXLY_CORRECT|PS4|TMPDIR|TZ|SHELL|SHLVL|PWD|OLDPWD) return 0 ;;
    UID|EUID|PPID|GROUPS|RANDOM|SRANDOM|SECONDS|LINENO|HISTCMD|OPTIND|OPTARG|OPTERR|FUNCNAME|DIRSTACK) return 0 ;;
    EPOCHSECONDS|EPOCHREALTIME|COLUMNS|LINES|HOSTNAME|HOSTTYPE|MACHTYPE|OSTYPE|TERM|LANG|LANGUAGE) return 0 ;;
    LC_*|BASH*|LD_*|DOCKER_*|BUILDKIT_*|OTEL_*|GO*|SSL_CERT_*|TENANT_HOST_*|AWS_*|PYTHON*) return 0 ;;
    [Hh][Tt][Tt][Pp]_[Pp][Rr][Oo][Xx][Yy]|[Hh][Tt][Tt][Pp][Ss]_[Pp][Rr][Oo][Xx][Yy]) return 0 ;;
    [Nn][Oo]_[Pp][Rr][Oo][Xx][Yy]|[Aa][Ll][Ll]_[Pp][Rr][Oo][Xx][Yy]) return 0 ;;
  esac
  return 1
}

# start_slot REV FILE SLOT: runs the loaded revision in SLOT. Values are never parsed by a shell:
# a one-line value goes to docker in a mode-0600 `--env-file` (read verbatim to the end of its line,
# removed after `docker run`), so its name cannot change this shell or the docker CLI (PATH,
# DOCKER_HOST, LD_PRELOAD, `_`, readonly UID ...); a value with a line break, which an env file
# cannot hold, reaches docker as `-e KEY` from the CLI's environment, refused under a name that
# would change the CLI. Both arrive byte for byte. The env lives only in this subshell.
start_slot() {
  local rev="$1" file="$2" slot="$3" port name old envfile rc
  port="$(slot_port "$slot")"; name="$R_NAME-$slot"
  old="$(slot_container "$slot")"
  [ -n "$old" ] && docker rm -f "$old" >/dev/null 2>&1
  docker rm -f "$name" >/dev/null 2>&1
  envfile="$(mktemp "$WORK/env.XXXXXX")" || return 1
  (
    set +u
    args=(run -d --name "$name" -p "$port:$R_CPORT" --restart "$R_RESTART"
      --label "fleet.molecule.ai/slot=$slot" --label "fleet.molecule.ai/digest=$R_DIGEST"
      --label "fleet.molecule.ai/env-revision=$R_ENVREV" --label "fleet.molecule.ai/revision=$rev"
      --label "fleet.molecule.ai/port=$port" --label "fleet.molecule.ai/health-path=$R_HEALTH"
      "${RUN_ARGS[@]}" --env-file "$envfile")
    while IFS=' ' read -r kind key value; do
      [ "$kind" = env ] || continue
      key="$(b64d "$key")"
      [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
      value="$(b64d "$value"; printf x)"; value="${value%x}"
      if [[ "$value" == *[$'\n\r']* ]]; then
        if multiline_unsafe "$key"; then log "env $key: a value with a line break cannot be passed under this name"; exit 3; fi
        export "$key=$value" || exit 3
        args+=(-e "$key")
      else
        printf '%s=%s\n' "$key" "$value" >> "$envfile" || exit 3
      fi
    done < "$file"
    docker "${args[@]}" "$R_IMAGE@$R_DIGEST" >/dev/null
  )
  rc=$?
  rm -f "$envfile"
  return "$rc"
}

# wait_healthy SLOT: polls the slot's health path until 200 or the revision's timeout.
wait_healthy() {
  local port deadline
  port="$(slot_port "$1")"; deadline=$(( $(date +%s) + R_TIMEOUT ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if curl -fsS -o /dev/null --max-time 2 --proto '=http' "http://$ADDR:$port$R_HEALTH"; then return 0; fi
    sleep 0.5
  done
  return 1
}

# env_value FILE KEY: the value of one env key of the revision (printed to stdout, for a pipe only).
env_value() {
  local kind key value
  while IFS=' ' read -r kind key value; do
    [ "$kind" = env ] || continue
    [ "$(b64d "$key")" = "$2" ] || continue
    b64d "$value"; return 0
  done < "$1"
  return 1
}

# smoke_checks SLOT FILE: the revision's smoke checks, each one GET/HEAD of a path on the slot's own
# local port only (the URL is built here; the path is checked again), no redirects, no proxy, short
# timeouts, compared with the expected status. A bearer is read from the revision's env into a
# mode-0600 header file that curl reads (`-H @file`), never in argv nor in the log, removed at once.
# On failure SMOKE_FAILED names the check.
smoke_checks() {
  local slot="$1" file="$2" port kind name method status path bearer code hfile value
  local -a how
  port="$(slot_port "$slot")"; SMOKE_FAILED=""
  while IFS=' ' read -r kind name method status path bearer; do
    [ "$kind" = smoke ] || continue
    name="$(b64d "$name")"; path="$(b64d "$path")"
    [[ "$name" =~ $SMOKE_NAME_RE ]] || name=invalid
    SMOKE_FAILED="$name"
    [[ "$path" =~ $SMOKE_PATH_RE ]] && [[ "$path" != //* ]] && [[ "$status" =~ ^[1-5][0-9][0-9]$ ]] || return 1
    case "$method" in GET) how=() ;; HEAD) how=(--head) ;; *) return 1 ;; esac
    hfile=""
    if [ "$bearer" != "-" ]; then
      hfile="$(mktemp "$WORK/hdr.XXXXXX")" || return 1
      value="$(env_value "$file" "$(b64d "$bearer")"; printf x)"; value="${value%x}"
      if [ -z "$value" ] || [[ "$value" == *[$'\n\r']* ]]; then
        rm -f "$hfile"; log "smoke check $name: its bearer is empty or not one line"; return 1
      fi
      printf 'Authorization: Bearer %s\n' "$value" > "$hfile"; value=""
      how+=(-H "@$hfile")
    fi
    code="$(curl -sS -g -o /dev/null -w '%{http_code}' --max-time 5 --connect-timeout 2 --max-redirs 0 \
      --proto '=http' --noproxy '*' "${how[@]}" "http://$ADDR:$port$path" </dev/null)"
    [ -n "$hfile" ] && rm -f "$hfile"
    log "smoke check $name: expected $status, got $code"
    [ "$code" = "$status" ] || return 1
  done < "$file"
  SMOKE_FAILED=""
  return 0
}

# The router: a proxy on the routing port (it must not inherit the report pipe or the host lock); each new connection reads the upstream port file, so a
# switch is one atomic rename. Connections in flight finish on the old slot, which stays warm.
# An external router (the seed's Worker KV) would replace set_upstream with a call of its own.
ensure_router() {
  local pidfile="$STATE/router.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then return 0; fi
  setsid socat "TCP-LISTEN:$R_PORT_ROUTING,bind=$ADDR,fork,reuseaddr" \
    "SYSTEM:exec socat STDIO TCP\:$ADDR\:\$(cat $STATE/upstream)" </dev/null >/dev/null 2>&1 3>&- 9>&- &
  echo $! > "$pidfile"
  sleep 0.2
}
set_upstream() {
  printf '%s' "$2" > "$STATE/upstream.tmp" && mv -f "$STATE/upstream.tmp" "$STATE/upstream"
  printf '%s' "$1" > "$STATE/active-slot.tmp" && mv -f "$STATE/active-slot.tmp" "$STATE/active-slot"
}

# Old slots kept warm are retired by a later run once their time is up.
retire_expired() {
  local f slot until
  for f in "$STATE"/retire-*; do
    [ -e "$f" ] || continue
    slot="${f##*/retire-}"; until="$(cat "$f")"
    if [ "$(cat "$STATE/active-slot" 2>/dev/null)" = "$slot" ]; then rm -f "$f"; continue; fi
    if [[ "$until" =~ ^[0-9]+$ ]] && [ "$(date +%s)" -ge "$until" ]; then
      id="$(slot_container "$slot")"; [ -n "$id" ] && docker stop "$id" >/dev/null 2>&1
      rm -f "$f"; log "retired the $slot slot"
    fi
  done
}

prune_images() {
  local keep=() line
  for slot in blue green; do
    id="$(slot_container "$slot")"; [ -n "$id" ] && keep+=("$(label "$id" fleet.molecule.ai/digest)")
  done
  docker images --digests --format "$(tpl .Repository)@$(tpl .Digest)" 2>/dev/null | while read -r line; do
    case " ${keep[*]} " in *" ${line##*@} "*) ;; *) docker rmi "$line" >/dev/null 2>&1 ;; esac
  done
}

retire_expired

case "$AGENT_ACTION" in
  observe) report ok "" ;;
  prune) prune_images; report ok "" ;;
esac

# --- apply / switch ------------------------------------------------------------------------

[ -n "$AGENT_REVISION" ] || report error no-revision
APPLIED="$(cat "$STATE/applied-revision" 2>/dev/null)"
WORK="$(mktemp -d "$STATE/rev.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
REVFILE="$WORK/desired"
if ! fetch_revision "$AGENT_REVISION" "$REVFILE"; then report error revision-unreadable; fi
if ! load_revision "$REVFILE"; then report error revision-invalid; fi

ACTIVE="$(cat "$STATE/active-slot" 2>/dev/null)"
case "$ACTIVE" in blue|green) ;; *) ACTIVE="" ;; esac

# A repeated command for what already runs healthy is harmless: nothing changes.
if [ "$APPLIED" = "$AGENT_REVISION" ] && [ -n "$ACTIVE" ]; then
  id="$(slot_container "$ACTIVE")"
  if [ -n "$id" ] && [ "$(label "$id" fleet.molecule.ai/revision)" = "$AGENT_REVISION" ] \
    && [ "$(docker inspect --format "$(tpl .State.Running)" "$id" 2>/dev/null)" = true ] && wait_healthy "$ACTIVE"; then
    log "revision $AGENT_REVISION already runs in the $ACTIVE slot"; report ok already-applied
  fi
fi

if [ "$R_STRATEGY" = bluegreen ]; then
  TARGET_SLOT=blue; [ "$ACTIVE" = blue ] && TARGET_SLOT=green
  id="$(slot_container "$TARGET_SLOT")"
  warm=false
  if [ -n "$id" ] && [ "$(label "$id" fleet.molecule.ai/revision)" = "$AGENT_REVISION" ] \
    && [ "$(docker inspect --format "$(tpl .State.Running)" "$id" 2>/dev/null)" = true ]; then warm=true; fi
  if [ "$warm" = true ]; then
    log "switch-back: the $TARGET_SLOT slot still runs $AGENT_REVISION warm; no pull, no start"
  else
    if ! docker pull "$R_IMAGE@$R_DIGEST" >/dev/null; then report error pull-failed; fi
    start_slot "$AGENT_REVISION" "$REVFILE" "$TARGET_SLOT" || { docker rm -f "$R_NAME-$TARGET_SLOT" >/dev/null 2>&1; report error start-failed; }
  fi
  FAILURE=""
  if ! wait_healthy "$TARGET_SLOT"; then FAILURE=health-failed
  elif ! smoke_checks "$TARGET_SLOT" "$REVFILE"; then FAILURE="smoke-failed:$SMOKE_FAILED"; fi
  rm -f "$REVFILE"
  if [ -n "$FAILURE" ]; then
    # The active slot never stopped serving: nothing to roll back but the idle slot.
    log "revision $AGENT_REVISION: $FAILURE"
    id="$(slot_container "$TARGET_SLOT")"; [ -n "$id" ] && docker rm -f "$id" >/dev/null 2>&1
    report error "$FAILURE"
  fi
  ensure_router
  set_upstream "$TARGET_SLOT" "$(slot_port "$TARGET_SLOT")"
  [ -n "$ACTIVE" ] && printf '%s' "$(( $(date +%s) + R_KEEPWARM ))" > "$STATE/retire-$ACTIVE"
  printf '%s' "$AGENT_REVISION" > "$STATE/applied-revision"
  log "switched to the $TARGET_SLOT slot (revision $AGENT_REVISION)"
  prune_images
  report ok switched
fi

# In place: pull by digest, stop, run in the active slot, health; on failure run the previous again.
SLOT="${ACTIVE:-blue}"
if ! docker pull "$R_IMAGE@$R_DIGEST" >/dev/null; then report error pull-failed; fi
STARTED=true
start_slot "$AGENT_REVISION" "$REVFILE" "$SLOT" || STARTED=false
FAILURE=""
if [ "$STARTED" != true ]; then FAILURE=start-failed
elif ! wait_healthy "$SLOT"; then FAILURE=health-failed
elif ! smoke_checks "$SLOT" "$REVFILE"; then FAILURE="smoke-failed:$SMOKE_FAILED"; fi
rm -f "$REVFILE"
if [ -z "$FAILURE" ]; then
  printf '%s' "$SLOT" > "$STATE/active-slot"
  printf '%s' "$AGENT_REVISION" > "$STATE/applied-revision"
  log "applied $AGENT_REVISION in place in the $SLOT slot"
  prune_images
  report ok applied
fi
log "revision $AGENT_REVISION: $FAILURE"
if [ -n "$APPLIED" ] && fetch_revision "$APPLIED" "$WORK/previous" && load_revision "$WORK/previous"; then
  start_slot "$APPLIED" "$WORK/previous" "$SLOT"
  rm -f "$WORK/previous"
  wait_healthy "$SLOT" && log "rolled back to $APPLIED"
  # A check's name may end in `-rolled-back`, never hold `:`: smoke failures say `:rolled-back`.
  case "$FAILURE" in smoke-failed:*) report error "$FAILURE:rolled-back" ;; *) report error "$FAILURE-rolled-back" ;; esac
fi
id="$(slot_container "$SLOT")"; [ -n "$id" ] && docker rm -f "$id" >/dev/null 2>&1
report error "$FAILURE"
