# tenant-operator host agent.
#
# This is the fixed body of the operator's SSM Command document. The operator prepends a header
# that sets AGENT_ACTION, AGENT_DIGEST (both checked by SSM against the document's allowedValues and
# allowedPattern, and again below) and the constants PARAM_ROOT and AGENT_VERSION. Nothing a user
# controls is ever part of this text, and nothing in it is one host's: every host of a batch gets
# the same command. The rest of the desired state is the host's own revision parameter
# ($PARAM_ROOT/<org>/revision), read with the host's own role; the revision id it applies is that
# parameter's base id followed by the first 32 hex digits of the digest.
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
# LEGACY_JSON (set by inspect-legacy) is an object built by legacy_py from validated values only.
LEGACY_JSON=""
report() {
  local status="$1" detail="${2:-}" extra=""
  [ -n "$LEGACY_JSON" ] && extra=",\"legacy\":$LEGACY_JSON"
  printf '{"v":1,"agent":"%s","action":"%s","revision":"%s","status":"%s","detail":"%s",%s%s}\n' \
    "$AGENT_VERSION" "$AGENT_ACTION" "$AGENT_REVISION" "$status" "$detail" "$(observe_json)" "$extra" >&3
  if [ "$status" = "ok" ]; then exit 0; else exit 1; fi
}

# Values that reach the JSON report are checked against a strict pattern; anything else is
# reported as "invalid" so a hand-edited host can never break (or inject into) the report.
safe() {
  local value="$1" pattern="$2"
  if [[ "$value" =~ $pattern ]]; then printf '%s' "$value"; else printf 'invalid'; fi
}

# read_org: this host's org, from its org file: one DNS label (at most 63 characters) and at most one
# newline after it. Anything else (no file, more lines, a NUL byte, a longer or larger file) is no
# org at all, never a part of the file: an org decides which parameters this host asks for.
read_org() {
  local f="$ROOT/etc/tenant-operator/org" size org
  [ -f "$f" ] || return 0
  size="$(wc -c < "$f" 2>/dev/null)" || return 0
  [ "$size" -le 64 ] 2>/dev/null || return 0
  org="$(cat "$f" 2>/dev/null; printf x)"; org="${org%x}"
  # Command substitution drops NUL bytes (and counts a multi-byte character once): the count differs.
  [ "${#org}" -eq "$size" ] || return 0
  org="${org%$'\n'}"
  [[ "$org" =~ ^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$ ]] && printf '%s' "$org"
  return 0
}
ORG="$(read_org)"

# The revision applied: known once the revision parameter is read (apply, adopt).
AGENT_REVISION=""
case "$AGENT_ACTION" in
  observe|apply|switch|prune|inspect-legacy|adopt|unadopt) ;;
  *) AGENT_ACTION=invalid; report error bad-action ;;
esac
if ! [[ "$AGENT_DIGEST" =~ ^(sha256:[a-f0-9]{64})?$ ]]; then AGENT_DIGEST=""; report error bad-digest; fi


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
  if [ -z "$id" ] && [ "$slot" = blue ]; then id="$(adopted_id)"; fi
  if [ -z "$id" ]; then printf 'null'; return; fi
  name="$(docker inspect --format "$(tpl .Name)" "$id" 2>/dev/null)"; name="${name#/}"
  running="$(docker inspect --format "$(tpl .State.Running)" "$id" 2>/dev/null)"
  if [ "$id" = "$(adopted_id)" ]; then
    # The hand-run container the operator adopted: it has no labels; the adoption recorded them.
    digest="$(cat "$STATE/adopted/digest" 2>/dev/null)"; envrev="$(cat "$STATE/adopted/env-revision" 2>/dev/null)"
    port="$(cat "$STATE/adopted/port" 2>/dev/null)"; path="$(cat "$STATE/adopted/health-path" 2>/dev/null)"
  else
    digest="$(label "$id" fleet.molecule.ai/digest)"
    envrev="$(label "$id" fleet.molecule.ai/env-revision)"
    port="$(label "$id" fleet.molecule.ai/port)"
    path="$(label "$id" fleet.molecule.ai/health-path)"
  fi
  health=unknown
  if [ "$running" = "true" ] && [[ "$port" =~ $PORT_RE ]] && [[ "$path" =~ ^/[A-Za-z0-9._~/-]*$ ]]; then
    if curl -fsS -o /dev/null --max-time 3 --proto '=http' "http://$ADDR:$port$path"; then health=healthy; else health=unhealthy; fi
  fi
  [ "$running" = "true" ] || running=false
  printf '{"container":"%s","running":%s,"digest":"%s","envRevision":"%s","health":"%s"}' \
    "$(safe "$name" "$NAME_RE")" "$running" "$(safe "$digest" "$DIGEST_RE")" \
    "$(safe "$envrev" "$ENVREV_RE")" "$health"
}

# adopted_id: the full id of the hand-run container an adoption took over, while it exists.
adopted_id() {
  local id
  id="$(cat "$STATE/adopted/id" 2>/dev/null)"
  [[ "$id" =~ ^[a-f0-9]{64}$ ]] || return 0
  [ -n "$(docker ps -a -q --no-trunc --filter "id=$id" 2>/dev/null)" ] && printf '%s' "$id"
}

# legacy_ids: running containers the operator did not start (today's hand-run app), full ids.
legacy_ids() {
  local id adopted
  adopted="$(adopted_id)"
  for id in $(docker ps -q --no-trunc 2>/dev/null); do
    [ "$id" = "$adopted" ] && continue
    [ -z "$(label "$id" fleet.molecule.ai/slot)" ] && printf '%s\n' "$id"
  done
}
legacy_json() { legacy_ids | grep -c . ; }

# The cron auto-updater of today's fleet (seed 000, option B): its entry, and where an adoption puts
# it aside so that un-adopting can put it back.
CRON_ENTRY="$ROOT/etc/cron.d/molecule-autoupdate"
CRON_ASIDE="$STATE/cron-aside/molecule-autoupdate"
UPDATER="$ROOT/usr/local/bin/molecule-auto-update.sh"
cron_state() {
  if [ -f "$CRON_ENTRY" ] && grep -v '^[[:space:]]*#' "$CRON_ENTRY" | grep -q 'molecule-auto-update'; then printf active
  elif [ -f "$CRON_ENTRY" ] || [ -f "$CRON_ASIDE" ]; then printf disabled
  else printf absent; fi
}

observe_json() {
  local active applied managed=false
  active="$(cat "$STATE/active-slot" 2>/dev/null)"
  case "$active" in blue|green) ;; *) active="" ;; esac
  applied="$(cat "$STATE/applied-revision" 2>/dev/null)"
  if [ -n "$applied" ]; then managed=true; fi
  printf '"org":"%s","managed":%s,"applied":"%s","active":"%s","slots":{"blue":%s,"green":%s},"unmanagedContainers":%s,"cron":"%s","adopted":%s' \
    "$ORG" "$managed" "$(safe "$applied" "$REV_RE")" "$active" "$(slot_json blue)" "$(slot_json green)" "$(legacy_json)" \
    "$(cron_state)" "$([ -n "$(adopted_id)" ] && printf true || printf false)"
}

# One command at a time on this host; a second waits for the first.
exec 9>"$STATE/lock"
if ! flock -w 900 9; then report error lock-timeout; fi
log "start digest=$AGENT_DIGEST org=$ORG"

# --- desired state ----------------------------------------------------------------------

b64d() { printf '%s' "$1" | base64 -d; }

# fetch_revision FILE [VERSION]: this host's revision parameter (that version of it, when given),
# read with this host's own role, in one call; FILE.version gets the version read. The value holds
# no tab: the CLI's text output is the version, a tab, then the value.
fetch_revision() {
  local name="$PARAM_ROOT/$ORG/revision" ver first
  [ -n "$ORG" ] || return 1
  if [ -n "${2:-}" ]; then [[ "$2" =~ ^[0-9]{1,6}$ ]] || return 1; name="$name:$2"; fi
  aws ssm get-parameter --with-decryption --name "$name" \
    --query '[Parameter.Version,Parameter.Value]' --output text > "$1.raw" 2>>"$LOGFILE" || return 1
  IFS=$'\t' read -r ver first < "$1.raw" || return 1
  [[ "$ver" =~ ^[0-9]{1,6}$ ]] || return 1
  { printf '%s\n' "$first"; tail -n +2 "$1.raw"; } > "$1"
  rm -f "$1.raw"
  printf '%s' "$ver" > "$1.version"
}

# load_revision FILE: parses the line format into R_* variables and the RUN_ARGS / ENV_KEYS arrays.
# Every user-controlled field is base64 and decoded into a single argv element: nothing is eval'd.
load_revision() {
  local file="$1" kind a b c
  R_IMAGE=""; R_BASE=""; R_ENVREV=""; R_NAME=""; R_PORT_BLUE=""; R_PORT_GREEN=""; R_PORT_ROUTING=""
  R_CPORT=""; R_HEALTH="/health"; R_TIMEOUT=60; R_STRATEGY=inplace; R_KEEPWARM=600; R_RESTART=unless-stopped
  RUN_ARGS=(); ENV_KEYS=(); R_IMPORTED=0; R_LOGIN_HOST=""; R_LOGIN_USER=""; R_LOGIN_PASS=""
  head -n 1 "$file" | grep -qx 'tenant-operator-revision v2' || return 1
  while IFS=' ' read -r kind a b c; do
    case "$kind" in
      image) R_IMAGE="$(b64d "$a")" ;;
      base) [[ "$a" =~ ^[a-f0-9]{32}$ ]] && R_BASE="$a" ;;
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
      importedenv) [ "$a" = 1 ] && R_IMPORTED=1 ;;
      login) R_LOGIN_HOST="$(b64d "$a")"; R_LOGIN_USER="$(b64d "$b")"; R_LOGIN_PASS="$(b64d "$c")" ;;
    esac
  done < "$file"
  [ -n "$R_IMAGE" ] && [ -n "$R_BASE" ] && [ -n "$R_NAME" ] || return 1
  [[ "$R_PORT_BLUE" =~ $PORT_RE && "$R_PORT_GREEN" =~ $PORT_RE && "$R_PORT_ROUTING" =~ $PORT_RE && "$R_CPORT" =~ $PORT_RE ]] || return 1
  [[ "$R_HEALTH" =~ ^/[A-Za-z0-9._~/-]*$ ]] || return 1
  return 0
}

# An adopted tenant's revisions name the env taken over from the hand-run container: one write-once
# SecureString under this host's own prefix, written by the host itself (never by the operator).
IMPORTED_ENV_PARAM="imported-env"
fetch_imported() {
  [ "$R_IMPORTED" = 1 ] || return 0
  [ -s "$WORK/imported-env" ] && return 0
  aws ssm get-parameter --with-decryption --name "$PARAM_ROOT/$ORG/$IMPORTED_ENV_PARAM" \
    --query Parameter.Value --output text > "$WORK/imported-env" 2>>"$LOGFILE" \
    && head -n 1 "$WORK/imported-env" | grep -qx 'tenant-operator-env v1'
}
# The imported env lines come first: the revision's own env (spec env, envFrom) overrides them.
imported_env_lines() { if [ "$R_IMPORTED" = 1 ]; then grep '^env ' "$WORK/imported-env"; fi; return 0; }

# registry_login: logs in to the image's own registry with the revision's login, if it carries one.
# The password goes to docker on stdin: never an argument, never the log.
registry_login() {
  [ -n "$R_LOGIN_HOST" ] || return 0
  [[ "$R_LOGIN_HOST" =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$ ]] || { log "registry login: bad host"; return 1; }
  [[ "$R_LOGIN_USER" =~ ^[^[:space:][:cntrl:]]{1,256}$ ]] || { log "registry login: bad user name"; return 1; }
  case "$R_IMAGE" in "$R_LOGIN_HOST"/*) ;; *) log "registry login: not the image's registry"; return 1 ;; esac
  printf '%s' "$R_LOGIN_PASS" | docker login --username "$R_LOGIN_USER" --password-stdin "$R_LOGIN_HOST" >/dev/null 2>&1 \
    || { log "registry login to $R_LOGIN_HOST failed"; return 1; }
  log "logged in to $R_LOGIN_HOST as $R_LOGIN_USER"
}

slot_port() { if [ "$1" = green ]; then printf '%s' "$R_PORT_GREEN"; else printf '%s' "$R_PORT_BLUE"; fi; }
slot_container() {
  local id
  id="$(docker ps -a -q --filter "label=fleet.molecule.ai/slot=$1" 2>/dev/null | head -n 1)"
  if [ -z "$id" ] && [ "$1" = blue ]; then id="$(adopted_id)"; fi
  printf '%s' "$id"
}

# multiline_unsafe NAME: names under which a multi-line value cannot be passed. Such a value reaches
# docker through the CLI's own environment (`env KEY=VALUE docker ... -e KEY`), so the name must mean
# nothing to the docker CLI and what it loads (nor, to be safe, to a shell).
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
# cannot hold, reaches docker as `-e KEY` from the CLI's environment, which `env` sets for docker
# alone (never as a variable of this shell: a key named like one of the loop's own variables, or
# `args`, would otherwise change what runs), refused under a name that would change the CLI. Both
# arrive byte for byte.
start_slot() {
  local rev="$1" file="$2" slot="$3" port name old envfile rc
  port="$(slot_port "$slot")"; name="$R_NAME-$slot"
  old="$(slot_container "$slot")"
  [ -n "$old" ] && docker rm -f "$old" >/dev/null 2>&1
  docker rm -f "$name" >/dev/null 2>&1
  # An adopted host's blue slot is where the hand-run container lived; one started again by hand
  # under its old name (a changed host, drift) is replaced too.
  if [ "$slot" = blue ] && [ -f "$STATE/adopted/name" ]; then
    old="$(cat "$STATE/adopted/name")"; [[ "$old" =~ $NAME_RE ]] && docker rm -f "$old" >/dev/null 2>&1
  fi
  envfile="$(mktemp "$WORK/env.XXXXXX")" || return 1
  (
    set +u
    cli_env=()
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
        cli_env+=("$key=$value")
        args+=(-e "$key")
      else
        printf '%s=%s\n' "$key" "$value" >> "$envfile" || exit 3
      fi
    done < <(imported_env_lines; cat "$file")
    env -- "${cli_env[@]}" docker "${args[@]}" "$R_IMAGE@$R_DIGEST" >/dev/null
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
  # shellcheck disable=SC2094 # env_value only reads "$file", as this loop does; nothing writes it.
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


# --- adoption of today's hand-run container ---------------------------------------------------

# legacy_py MODE CONTAINER.json IMAGE.json [OUT]: reads `docker inspect` output. `inspect` prints one
# compact JSON object of what `docker run` was given, env var NAMES only, each value checked against
# a strict pattern (anything else is dropped and named in "dropped"). `env` writes the container's
# env (less the image's own defaults) in the revision's base64 line format to OUT, never to stdout.
LEGACY_PY='
import base64, json, re, sys
mode, cpath, ipath = sys.argv[1], sys.argv[2], sys.argv[3]
c = json.load(open(cpath))[0]
try:
    img = json.load(open(ipath))[0]
except (ValueError, IndexError, OSError):
    img = dict()
cfg, hc, icfg = c.get("Config") or dict(), c.get("HostConfig") or dict(), img.get("Config") or dict()
image_env = set(icfg.get("Env") or [])
env = [e for e in (cfg.get("Env") or []) if e not in image_env]
ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
def b64(s):
    return base64.b64encode(s.encode("utf-8", "surrogateescape")).decode()
if mode == "env":
    with open(sys.argv[4], "w") as out:
        out.write("tenant-operator-env v1\n")
        for e in env:
            k, _, v = e.partition("=")
            if ENV.match(k):
                out.write("env %s %s\n" % (b64(k), b64(v)))
    sys.exit(0)
dropped = []
def ok(pattern, value, what):
    if isinstance(value, str) and re.fullmatch(pattern, value):
        return True
    dropped.append(what)
    return False
PATH = r"/[A-Za-z0-9._/@+-]{0,511}"
o = dict()
name = (c.get("Name") or "").lstrip("/")
o["container"] = name if ok(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}", name, "container") else ""
ref = cfg.get("Image") or ""
repo = ref.split("@")[0]
last = repo.rsplit("/", 1)[-1]
if ":" in last:
    repo = repo[: len(repo) - len(last)] + last.split(":")[0]
digest, image = "", ""
for rd in img.get("RepoDigests") or []:
    r, _, d = rd.partition("@")
    if r == repo or not digest:
        digest, image = d, r
o["digest"] = digest if ok(r"sha256:[a-f0-9]{64}", digest, "digest") else ""
o["image"] = image if ok(r"[a-z0-9][a-z0-9._:/-]{0,254}", image, "image") else ""
o["envNames"] = sorted(set(k for k in (e.partition("=")[0] for e in env) if ok(ENV.pattern[1:-1], k, "env")))
ports = []
for key, binds in sorted((hc.get("PortBindings") or dict()).items()):
    cport, _, proto = key.partition("/")
    for b in binds or []:
        hp = b.get("HostPort") or ""
        if proto == "tcp" and ok(r"[0-9]{1,5}", cport, "port") and ok(r"[0-9]{1,5}", hp, "port"):
            ports.append(dict(host=int(hp), container=int(cport)))
o["ports"] = ports
vols, sock = [], False
for b in hc.get("Binds") or []:
    parts = b.split(":")
    if len(parts) >= 2 and parts[0] == "/var/run/docker.sock" and parts[1] == "/var/run/docker.sock":
        sock = True
        continue
    if len(parts) in (2, 3) and ok(PATH, parts[0], "volume") and ok(PATH, parts[1], "volume") \
            and ".." not in parts[0].split("/") + parts[1].split("/"):
        vols.append(dict(hostPath=parts[0], containerPath=parts[1], readOnly="ro" in parts[2:]))
    elif len(parts) not in (2, 3):
        dropped.append("volume")
o["volumes"] = vols
o["mountDockerSocket"] = sock
net = hc.get("NetworkMode") or "bridge"
o["network"] = "bridge" if net == "default" else net if ok(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}", net, "network") else ""
rp = (hc.get("RestartPolicy") or dict()).get("Name") or "no"
o["restartPolicy"] = rp if ok(r"no|always|unless-stopped|on-failure", rp, "restartPolicy") else ""
hosts = []
for h in hc.get("ExtraHosts") or []:
    hn, _, ip = h.partition(":")
    if ok(r"[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?", hn, "extraHost") and \
            ok(r"[0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9a-fA-F:]+|host-gateway", ip, "extraHost"):
        hosts.append(dict(hostname=hn, ip=ip))
o["extraHosts"] = hosts
image_labels = icfg.get("Labels") or dict()
labels = dict()
for k, v in sorted((cfg.get("Labels") or dict()).items()):
    if image_labels.get(k) == v or k.startswith("fleet.molecule.ai/"):
        continue
    if ok(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}", k, "label") and ok(r"[A-Za-z0-9._:/@+= -]{0,256}", v, "label"):
        labels[k] = v
o["labels"] = labels
o["dropped"] = sorted(set(dropped))
print(json.dumps(o, separators=(",", ":"), sort_keys=True))
'

# legacy_one: the one hand-run container to adopt, or a failure detail on stdout and status 1.
legacy_one() {
  local ids n
  ids="$(legacy_ids)"; n="$(printf '%s' "$ids" | grep -c .)"
  if [ "$n" = 0 ]; then printf 'no-legacy-container'; return 1; fi
  if [ "$n" != 1 ]; then printf 'several-legacy-containers'; return 1; fi
  printf '%s' "$ids"
}

# legacy_files ID DIR: `docker inspect` of the container and its image into DIR.
legacy_files() {
  docker inspect "$1" > "$2/container.json" 2>/dev/null || return 1
  docker inspect --type image "$(docker inspect --format "$(tpl .Image)" "$1" 2>/dev/null)" > "$2/image.json" 2>/dev/null
  return 0
}

# updater_quiet: waits (up to 2 minutes) for a running auto-updater to finish, once its entry is gone.
updater_quiet() {
  local deadline=$(( $(date +%s) + 120 ))
  while pgrep -f "$UPDATER" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
cron_aside() {
  [ -f "$CRON_ENTRY" ] || return 0
  mkdir -p "$(dirname "$CRON_ASIDE")" && mv -f "$CRON_ENTRY" "$CRON_ASIDE" && log "cron auto-updater entry moved aside"
}
cron_restore() {
  [ -f "$CRON_ASIDE" ] || return 0
  [ -f "$CRON_ENTRY" ] && { log "a cron entry exists again; the one set aside stays aside"; return 0; }
  mkdir -p "$(dirname "$CRON_ENTRY")" && mv -f "$CRON_ASIDE" "$CRON_ENTRY" && log "cron auto-updater entry restored"
}

retire_expired

case "$AGENT_ACTION" in
  observe) report ok "" ;;
  prune) prune_images; report ok "" ;;
  inspect-legacy)
    # Read-only: what the hand-run container runs and how it was started. Nothing changes.
    id="$(legacy_one)" || report error "$id"
    WORK="$(mktemp -d "$STATE/inspect.XXXXXX")"; trap 'rm -rf "$WORK"' EXIT
    legacy_files "$id" "$WORK" || report error inspect-failed
    LEGACY_JSON="$(python3 -c "$LEGACY_PY" inspect "$WORK/container.json" "$WORK/image.json" 2>>"$LOGFILE")" \
      || { LEGACY_JSON=""; report error inspect-failed; }
    report ok inspected ;;
  unadopt)
    # Hands the host back to the cron auto-updater: the entry returns, the markers go, containers stay.
    name="$(cat "$STATE/adopted/name" 2>/dev/null)"
    if [[ "$name" =~ $NAME_RE ]] && [ -z "$(docker ps -a -q --filter "name=^$name\$" 2>/dev/null)" ]; then
      active="$(cat "$STATE/active-slot" 2>/dev/null)"; case "$active" in blue|green) ;; *) active=blue ;; esac
      id="$(slot_container "$active")"
      [ -n "$id" ] && docker rename "$id" "$name" >/dev/null 2>&1 && log "the serving container is $name again"
    fi
    cron_restore
    rm -rf "$STATE/adopted" "$STATE/applied-revision" "$STATE/applied-digest" "$STATE/applied-version" "$STATE/active-slot"
    log "released: the operator no longer manages this host"
    report ok released ;;
esac

# --- apply / switch ------------------------------------------------------------------------

[ -n "$AGENT_DIGEST" ] || report error no-digest
APPLIED="$(cat "$STATE/applied-revision" 2>/dev/null)"
WORK="$(mktemp -d "$STATE/rev.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
REVFILE="$WORK/desired"
if ! fetch_revision "$REVFILE"; then report error revision-unreadable; fi
if ! load_revision "$REVFILE"; then report error revision-invalid; fi
R_DIGEST="$AGENT_DIGEST"
AGENT_REVISION="$R_BASE${AGENT_DIGEST:7:32}"
REV_VERSION="$(cat "$REVFILE.version")"
# applied REV: records what now runs (and where to read it again for a rollback).
applied() {
  printf '%s' "$1" > "$STATE/applied-revision"
  printf '%s' "$R_DIGEST" > "$STATE/applied-digest"
  printf '%s' "$REV_VERSION" > "$STATE/applied-version"
}

if [ "$AGENT_ACTION" = adopt ]; then
  # Takes over the hand-run container without stopping it: the cron entry goes aside first (and any
  # run of the updater finishes), the container must still run the digest the revision was built
  # from, its env is stored by this host under its own prefix (values never reach stdout, the log or
  # the command), then the markers make the host managed with the container in the blue slot.
  if [ "$APPLIED" = "$AGENT_REVISION" ] && [ -n "$(adopted_id)" ]; then report ok already-adopted; fi
  if [ -n "$APPLIED" ]; then report error already-managed; fi
  fail() { cron_restore; report error "$1"; }
  cron_aside || fail cron-not-disabled
  updater_quiet || fail updater-still-running
  id="$(legacy_one)" || fail "$id"
  legacy_files "$id" "$WORK" || fail inspect-failed
  seen="$(python3 -c "$LEGACY_PY" inspect "$WORK/container.json" "$WORK/image.json" 2>>"$LOGFILE")" || fail inspect-failed
  [[ "$seen" == *"\"digest\":\"$R_DIGEST\""* ]] || fail legacy-changed
  python3 -c "$LEGACY_PY" env "$WORK/container.json" "$WORK/image.json" "$WORK/env-import" 2>>"$LOGFILE" || fail env-export-failed
  tier=Standard; [ "$(wc -c < "$WORK/env-import")" -gt 4096 ] && tier=Advanced
  if ! aws ssm put-parameter --name "$PARAM_ROOT/$ORG/$IMPORTED_ENV_PARAM" --type SecureString --tier "$tier" \
      --value "file://$WORK/env-import" >/dev/null 2>"$WORK/put.err"; then
    if grep -q ParameterAlreadyExists "$WORK/put.err"; then
      # Write-once: an earlier adoption stored it. It must hold what the container runs with now.
      fetch_imported_any() { aws ssm get-parameter --with-decryption --name "$PARAM_ROOT/$ORG/$IMPORTED_ENV_PARAM" --query Parameter.Value --output text 2>>"$LOGFILE"; }
      [ "$(fetch_imported_any)" = "$(cat "$WORK/env-import")" ] || fail imported-env-differs
      log "the imported env was stored by an earlier adoption and is unchanged"
    else
      cat "$WORK/put.err" >> "$LOGFILE"; fail env-store-failed
    fi
  fi
  rm -f "$WORK/env-import"
  mkdir -p "$STATE/adopted"
  printf '%s' "$id" > "$STATE/adopted/id"
  printf '%s' "${seen#*\"container\":\"}" | cut -d'"' -f1 > "$STATE/adopted/name"
  printf '%s' "$R_DIGEST" > "$STATE/adopted/digest"
  printf '%s' "$R_ENVREV" > "$STATE/adopted/env-revision"
  printf '%s' "$R_PORT_BLUE" > "$STATE/adopted/port"
  printf '%s' "$R_HEALTH" > "$STATE/adopted/health-path"
  printf '%s' blue > "$STATE/active-slot"
  applied "$AGENT_REVISION"
  log "adopted container ${id:0:12} as revision $AGENT_REVISION in the blue slot; it kept serving"
  report ok adopted
fi
if [ "$R_IMPORTED" = 1 ] && ! fetch_imported; then report error imported-env-unreadable; fi

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
    registry_login || report error registry-login-failed
    if ! docker pull "$R_IMAGE@$R_DIGEST" >/dev/null; then report error pull-failed; fi
    start_slot "$AGENT_REVISION" "$REVFILE" "$TARGET_SLOT" || { docker rm -f "$R_NAME-$TARGET_SLOT" >/dev/null 2>&1; report error start-failed; }
  fi
  FAILURE=""
  if ! wait_healthy "$TARGET_SLOT"; then FAILURE="health-failed"
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
  applied "$AGENT_REVISION"
  log "switched to the $TARGET_SLOT slot (revision $AGENT_REVISION)"
  prune_images
  report ok switched
fi

# In place: pull by digest, stop, run in the active slot, health; on failure run the previous again.
SLOT="${ACTIVE:-blue}"
registry_login || report error registry-login-failed
if ! docker pull "$R_IMAGE@$R_DIGEST" >/dev/null; then report error pull-failed; fi
STARTED=true
start_slot "$AGENT_REVISION" "$REVFILE" "$SLOT" || STARTED=false
FAILURE=""
if [ "$STARTED" != true ]; then FAILURE=start-failed
elif ! wait_healthy "$SLOT"; then FAILURE="health-failed"
elif ! smoke_checks "$SLOT" "$REVFILE"; then FAILURE="smoke-failed:$SMOKE_FAILED"; fi
rm -f "$REVFILE"
if [ -z "$FAILURE" ]; then
  printf '%s' "$SLOT" > "$STATE/active-slot"
  applied "$AGENT_REVISION"
  log "applied $AGENT_REVISION in place in the $SLOT slot"
  prune_images
  report ok applied
fi
log "revision $AGENT_REVISION: $FAILURE"
# The previous revision: the version of the parameter it was read from, and its digest.
PREV_DIGEST="$(cat "$STATE/applied-digest" 2>/dev/null)"
PREV_VERSION="$(cat "$STATE/applied-version" 2>/dev/null)"
if [ -n "$APPLIED" ] && [[ "$PREV_DIGEST" =~ $DIGEST_RE && "$PREV_VERSION" =~ ^[0-9]{1,6}$ ]] \
  && fetch_revision "$WORK/previous" "$PREV_VERSION" && load_revision "$WORK/previous" && fetch_imported; then
  R_DIGEST="$PREV_DIGEST"
  start_slot "$APPLIED" "$WORK/previous" "$SLOT"
  rm -f "$WORK/previous"
  wait_healthy "$SLOT" && log "rolled back to $APPLIED"
  # A check's name may end in `-rolled-back`, never hold `:`: smoke failures say `:rolled-back`.
  case "$FAILURE" in smoke-failed:*) report error "$FAILURE:rolled-back" ;; *) report error "$FAILURE-rolled-back" ;; esac
fi
id="$(slot_container "$SLOT")"; [ -n "$id" ] && docker rm -f "$id" >/dev/null 2>&1
report error "$FAILURE"
