#!/usr/bin/env bash
# wafleet local services: Redis + PostgreSQL on loopback, data kept per checkout.
#
#   deploy/services.sh up|down|status|env|redis-start|redis-stop|pg-start|pg-stop|destroy
#
# Data lives in <repo>/.wafleet/ (see `usage` below). Ports: Redis 6390, Postgres
# 5440, overridable with WAFLEET_REDIS_PORT / WAFLEET_PG_PORT (honoured by every
# subcommand, including `env`). WAFLEET_PG_FAST=1 turns off fsync & co (dev only).
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@" # `sh deploy/services.sh …` too
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
ROOT="$(cd "$(dirname "$SELF")/.." && pwd -P)"
STATE="$ROOT/.wafleet"

REDIS_PORT="${WAFLEET_REDIS_PORT:-6390}"
PG_PORT="${WAFLEET_PG_PORT:-5440}"
PG_FAST="${WAFLEET_PG_FAST:-0}"
PG_USER_OS="wafleet-pg"          # unprivileged OS user running postgres (when we are root)
DB_ROLE="wafleet" DB_PASS="wafleet" DB_NAME="wafleet"

REDIS_DIR="$STATE/redis"
REDIS_CONF="$REDIS_DIR/redis.conf"
REDIS_PIDFILE="$REDIS_DIR/redis.pid"
REDIS_LOG="$STATE/redis.log"
# A Unix socket beside the TCP port, for clients on this host (bench-ingest uses it). Socket
# paths are limited to 107 bytes, so a very deep checkout goes without one.
REDIS_SOCKET="$REDIS_DIR/redis.sock"
(($(printf '%s' "$REDIS_SOCKET" | wc -c) <= 100)) || REDIS_SOCKET="" # bytes, not characters
PG_LOG="$STATE/pg.log"
PG_PATHFILE="$STATE/pg.path"     # records where the PG data dir actually is

usage() {
  cat <<EOF
usage: deploy/services.sh COMMAND

  up           install redis-server/postgresql if missing, start both (reuses running ones)
  down         stop both (data is kept)
  status       show whether each is running (exit 0 if both run, 3 otherwise)
  env          print export lines; use: eval "\$(deploy/services.sh env)"
  redis-start  / redis-stop   start/stop only Redis
  pg-start     / pg-stop      start/stop only PostgreSQL
  destroy      stop both and delete all their data

Redis    127.0.0.1:\${WAFLEET_REDIS_PORT:-6390}  data $REDIS_DIR
Postgres 127.0.0.1:\${WAFLEET_PG_PORT:-5440}  data under $STATE (see $PG_PATHFILE)
Logs     $STATE/*.log
EOF
}

die() { echo "services.sh: $*" >&2; exit 1; }
note() { echo "services.sh: $*" >&2; }

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_port() { [[ "$1" =~ ^[1-9][0-9]{0,4}$ ]] && (($1 <= 65535)); }
is_port "$REDIS_PORT" || die "WAFLEET_REDIS_PORT must be a port number (1-65535), got '$REDIS_PORT'"
is_port "$PG_PORT" || die "WAFLEET_PG_PORT must be a port number (1-65535), got '$PG_PORT'"
[[ "$REDIS_PORT" != "$PG_PORT" ]] || die "Redis and Postgres ports must differ"

# ---------------------------------------------------------------- helpers

# Serialise up/down/… of this checkout (two `up`s at once would race).
# The lock fd (9) is closed for every daemon we start (9>&-), so they don't inherit it.
take_lock() {
  { mkdir -p "$STATE" && chmod 0755 "$STATE" && exec 9>"$STATE/.lock"; } 2>/dev/null \
    || die "cannot write to $STATE (owned by $(stat -c %U "$STATE" 2>/dev/null || echo '?')); run as that user, or fix its ownership"
  flock -w 600 9 || die "timed out waiting for $STATE/.lock"
}

tail_log() { if [[ -f "$1" ]]; then tail -n 25 "$1" | sed 's/^/    /' >&2; fi; }

# port_taken PORT: something accepts connections on 127.0.0.1:PORT (bounded: a program that
# accepts and never answers must not hang us).
# shellcheck disable=SC2016 # $1 is the inner shell's
port_taken() { timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null; }

# port_holder PORT: ' (held by "prog",pid=N)' when ss can tell, else nothing.
port_holder() {
  local who
  command -v ss >/dev/null || return 0
  who="$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:(([^)]*))' | head -n1 || true)"
  who="${who#users:((}"
  [[ -z "$who" ]] || printf ' (held by %s)' "${who%))}"
}

# die_port_taken PORT VARIABLE WHAT: the clear error for a port some other program holds.
die_port_taken() {
  die "127.0.0.1:$1 is already in use by $3$(port_holder "$1"); set $2 to a free port (use the same value for every deploy/services.sh and deploy/just command of this checkout)"
}

# pid_is <pid> <comm> <cwd>: the process exists, is named <comm> and runs in <cwd>.
# (Both redis-server and postgres chdir into their data dir, so this tells a live
# server of ours apart from a recycled pid after a reboot / kill -9.)
pid_is() {
  local pid="$1" comm="$2" cwd="$3"
  is_uint "$pid" && [[ "$pid" -gt 0 ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm"* ]] || return 1
  [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$(readlink -f "$cwd")" ]] || return 1
}

wait_gone() { # wait_gone <pid> <seconds>
  local i
  for ((i = 0; i < $2 * 10; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}

APT_UPDATED=0
apt_install() { # apt_install pkg...
  local log="$STATE/install.log" sudo=()
  command -v apt-get >/dev/null \
    || die "apt-get not found (not Debian?): install $* yourself (Redis 6.2 or later, PostgreSQL 15) and re-run"
  if [[ $EUID -ne 0 ]]; then
    if ! command -v sudo >/dev/null; then
      die "installing $* needs root, and sudo is not installed: as root, run  apt-get install -y $*  then re-run this as you"
    elif ! sudo -n true 2>/dev/null; then
      die "installing $* needs root, and sudo asks for a password: run  sudo apt-get install -y $*  once, then re-run"
    fi
    sudo=(sudo -n)
  fi
  note "installing $* via apt (log: $log)"
  local start=$SECONDS
  {
    if [[ $APT_UPDATED == 0 ]]; then
      "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update && APT_UPDATED=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
      install -y --no-install-recommends "$@"
  } </dev/null >>"$log" 2>&1 9>&- || { tail_log "$log"; die "apt-get install $* failed"; }
  note "installed $* in $((SECONDS - start))s"
}

# ---------------------------------------------------------------- redis

redis_bins() { command -v redis-server >/dev/null && command -v redis-cli >/dev/null; }

redis_ensure_installed() {
  redis_bins || apt_install redis-server redis-tools
  redis_bins || die "redis-server / redis-cli still not found after install"
}

# Bounded: whatever holds the port may accept and never answer.
rcli() { timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@" 2>/dev/null </dev/null; }
redis_ping() { [[ "$(rcli ping || true)" == PONG ]]; }

# Redis quotes: "..." with \ and " escaped.
rq() { local s="${1//\\/\\\\}"; printf '"%s"' "${s//\"/\\\"}"; }

redis_conf_text() {
  cat <<EOF
# generated by deploy/services.sh -- rewritten on every start
bind 127.0.0.1
port $REDIS_PORT
daemonize yes
dir $(rq "$REDIS_DIR")
pidfile $(rq "$REDIS_PIDFILE")
logfile $(rq "$REDIS_LOG")
appendonly yes
appendfsync everysec
# Rewrite the AOF when it has grown by 4x its base, not Redis's default 1x: the base is mostly
# dedup marks (~52 bytes each) while every webhook appends ~1.7 KB, so at the default a Redis
# holding days of marks rewrites them all every few hundred thousand webhooks (README: Operations).
auto-aof-rewrite-percentage 400
save ""
EOF
  if [[ -n "$REDIS_SOCKET" ]]; then
    echo "unixsocket $(rq "$REDIS_SOCKET")"
    echo "unixsocketperm 700"
  fi
}

# pid of our running redis-server, or fail
redis_our_pid() {
  local pid
  [[ -f "$REDIS_PIDFILE" ]] || return 1
  pid="$(head -n1 "$REDIS_PIDFILE" 2>/dev/null || true)"
  pid_is "$pid" redis-server "$REDIS_DIR" || return 1
  echo "$pid"
}

redis_wait_ready() { # waits for PONG; fails early if the process dies
  local i pid
  for ((i = 0; i < 600; i++)); do
    redis_ping && return 0
    if ((i > 20)) && ! pid="$(redis_our_pid)"; then break; fi
    sleep 0.1
  done
  tail_log "$REDIS_LOG"
  die "redis did not come up on 127.0.0.1:$REDIS_PORT (log: $REDIS_LOG)"
}

redis_port_free() { # dies when another program holds the port
  if redis_ping; then
    die_port_taken "$REDIS_PORT" WAFLEET_REDIS_PORT "a Redis that is not this checkout's (its dir: $(rcli config get dir | tail -n1))"
  fi
  if port_taken "$REDIS_PORT"; then die_port_taken "$REDIS_PORT" WAFLEET_REDIS_PORT "another program"; fi
}

REDIS_ACTION=""
redis_start() {
  redis_ensure_installed
  mkdir -p "$REDIS_DIR"
  chmod 0700 "$REDIS_DIR"
  local pid want
  want="$(redis_conf_text)"
  if pid="$(redis_our_pid)"; then
    if [[ "$want" == "$(cat "$REDIS_CONF" 2>/dev/null)" ]]; then
      redis_wait_ready
      REDIS_ACTION=reused
      return 0
    fi
    # Moving to another port: make sure it is free before stopping the running one.
    [[ "$(sed -n 's/^port //p' "$REDIS_CONF" 2>/dev/null)" == "$REDIS_PORT" ]] || redis_port_free
    note "redis config changed (port?), restarting"
    redis_stop_pid "$pid"
  else
    redis_port_free
  fi
  printf '%s\n' "$want" >"$REDIS_CONF"
  redis-server "$REDIS_CONF" </dev/null >>"$REDIS_LOG" 2>&1 9>&- \
    || { tail_log "$REDIS_LOG"; die "redis-server failed to start (log: $REDIS_LOG)"; }
  redis_wait_ready
  REDIS_ACTION=started
}

redis_stop_pid() {
  local pid="$1"
  # SHUTDOWN (like SIGTERM) fsyncs the AOF, so data is kept. Via the port if it
  # is ours there, else by signal (e.g. it was started on another port).
  if [[ "$(rcli config get dir | tail -n1)" == "$REDIS_DIR" ]]; then
    rcli shutdown >/dev/null || true
    wait_gone "$pid" 30 && return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  wait_gone "$pid" 60 && return 0
  note "redis $pid ignored SIGTERM, killing"
  kill -KILL "$pid" 2>/dev/null || true
  wait_gone "$pid" 10 || true
}

redis_stop() {
  local pid
  if pid="$(redis_our_pid)"; then
    redis_stop_pid "$pid"
    note "redis stopped"
  else
    note "redis not running"
  fi
}

redis_status() {
  local pid
  if pid="$(redis_our_pid)"; then
    if redis_ping; then
      echo "redis:    running  127.0.0.1:$REDIS_PORT  pid $pid  data $REDIS_DIR"
    else
      local port
      port="$(sed -n 's/^port //p' "$REDIS_CONF" 2>/dev/null)"
      echo "redis:    running (pid $pid, port ${port:-?}) but NOT answering on 127.0.0.1:$REDIS_PORT  data $REDIS_DIR"
      return 1
    fi
  else
    echo "redis:    stopped  (port $REDIS_PORT, data $REDIS_DIR)"
    return 1
  fi
}

# ---------------------------------------------------------------- postgres

PGBIN=""
pg_find_bin() {
  local d best="" v bestv=-1
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x "$d/pg_ctl" && -x "$d/initdb" && -x "$d/postgres" ]] || continue
    v="$(basename "$(dirname "$d")")"
    is_uint "$v" || continue
    ((v > bestv)) && { bestv=$v; best=$d; }
  done
  if [[ -z "$best" ]] && command -v pg_config >/dev/null; then
    d="$(pg_config --bindir 2>/dev/null || true)"
    [[ -n "$d" && -x "$d/pg_ctl" && -x "$d/initdb" && -x "$d/postgres" ]] && best="$d"
  fi
  [[ -n "$best" ]] || return 1
  PGBIN="$best"
}

pg_ensure_installed() {
  pg_find_bin || apt_install postgresql
  pg_find_bin || die "PostgreSQL server binaries not found after install (looked in /usr/lib/postgresql/*/bin)"
}

# Run a command as the OS user that owns the cluster. As root that is $PG_USER_OS
# (postgres refuses to run as root); otherwise it is simply the current user.
# cd / first: initdb/pg_ctl need a readable cwd (root's cwd may be /root).
as_pg() {
  if [[ $EUID -eq 0 ]]; then
    (cd / && runuser -u "$PG_USER_OS" -- "$@")
  else
    (cd / && "$@")
  fi
}

pg_ensure_user() {
  [[ $EUID -eq 0 ]] || return 0
  id -u "$PG_USER_OS" >/dev/null 2>&1 && return 0
  command -v useradd >/dev/null || die "useradd not found; cannot create user $PG_USER_OS"
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin --comment "wafleet dev postgres" "$PG_USER_OS" \
    || id -u "$PG_USER_OS" >/dev/null 2>&1 || die "could not create user $PG_USER_OS"
}

repo_hash() { printf '%s' "$ROOT" | sha256sum | cut -c1-16; }

# Sets PGDATA, PGSOCK. Data dir is <repo>/.wafleet/pg when $PG_USER_OS can reach it,
# else /var/lib/wafleet-pg/<hash of repo path>/pg (e.g. repo under /root, mode 0700).
# The choice is written to .wafleet/pg.path and kept from then on.
PGDATA="" PGSOCK=""
pg_socket_ok() { (($(printf '%s' "$1/.s.PGSQL.$PG_PORT" | wc -c) <= 100)); }
pg_resolve_paths() { # pg_resolve_paths [create]
  local create="${1:-}" recorded=""
  [[ -f "$PG_PATHFILE" ]] && recorded="$(head -n1 "$PG_PATHFILE")"
  # Only this checkout's own places: a .wafleet/ copied from another checkout (cp -a, rsync)
  # names that one's cluster, which up would restart on our port and destroy would delete.
  case "$recorded" in
    "" | "$STATE/pg" | "/var/lib/wafleet-pg/$(repo_hash)/pg") ;;
    *)
      note "ignoring $PG_PATHFILE: $recorded is not this checkout's cluster (copied or moved from elsewhere?)"
      recorded=""
      ;;
  esac
  if [[ -n "$recorded" && ( -z "$create" || -f "$recorded/PG_VERSION" ) ]]; then
    PGDATA="$recorded"
  elif [[ -n "$create" ]]; then
    local in_repo=1
    if [[ $EUID -eq 0 ]]; then
      as_pg test -x "$STATE" 2>/dev/null || in_repo=0
      pg_socket_ok "$STATE/pg-socket" || in_repo=0
    fi
    if [[ $in_repo == 0 ]]; then
      mkdir -p /var/lib/wafleet-pg
      chmod 0755 /var/lib/wafleet-pg
      PGDATA="/var/lib/wafleet-pg/$(repo_hash)/pg"
      note "$STATE is not reachable for user $PG_USER_OS (or path too long): PG data goes to $PGDATA"
    else
      PGDATA="$STATE/pg"
    fi
    printf '%s\n' "$PGDATA" >"$PG_PATHFILE"
  else
    return 1 # never initialised
  fi
  local base
  base="$(dirname "$PGDATA")"
  PGSOCK="$base/pg-socket"
  if ! pg_socket_ok "$PGSOCK"; then # only possible for non-root with a very long repo path
    PGSOCK="/tmp/wafleet-pg-$(id -u)-$(repo_hash)"
  fi
  return 0
}

pg_conf_text() {
  local sock="${PGSOCK//\'/\'\'}"
  cat <<EOF
# generated by deploy/services.sh -- rewritten on every start
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$sock'
unix_socket_permissions = 0700
max_connections = 300
EOF
  if [[ "$PG_FAST" == 1 ]]; then
    cat <<EOF
# WAFLEET_PG_FAST=1: not crash-safe, dev/test only
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  fi
}

# pid of our running postmaster, or fail
pg_our_pid() {
  local pid
  [[ -n "$PGDATA" && -f "$PGDATA/postmaster.pid" ]] || return 1
  pid="$(head -n1 "$PGDATA/postmaster.pid" 2>/dev/null || true)"
  pid_is "$pid" postgres "$PGDATA" || return 1
  echo "$pid"
}

pg_ready() { "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 3 </dev/null >/dev/null 2>&1; }

# After a crash / kill -9 / reboot: remove a postmaster.pid whose process is gone
# (or whose pid now belongs to something else), once orphaned backends have exited.
pg_clear_stale() {
  [[ -f "$PGDATA/postmaster.pid" ]] || return 0
  local i p real left=()
  real="$(readlink -f "$PGDATA")"
  for ((i = 0; i < 150; i++)); do
    left=()
    for p in /proc/[0-9]*; do
      [[ "$(cat "$p/comm" 2>/dev/null)" == postgres* ]] || continue
      [[ "$(readlink "$p/cwd" 2>/dev/null)" == "$real" ]] && left+=("${p#/proc/}")
    done
    ((${#left[@]} == 0)) && break
    ((i == 100)) && { note "killing leftover postgres processes: ${left[*]}"; kill -KILL "${left[@]}" 2>/dev/null || true; }
    sleep 0.1
  done
  note "removing stale $PGDATA/postmaster.pid"
  rm -f "$PGDATA/postmaster.pid" "$PGSOCK"/.s.PGSQL.*
}

# initdb ran to the end: its last step (pg_initdb) appends our include line. A data dir without
# it is what an interrupted initdb (kill -9, power loss) leaves, and never held a started cluster.
pg_initialised() { grep -qxF "include_if_exists = 'wafleet.conf'" "$PGDATA/postgresql.conf" 2>/dev/null; }

pg_initdb() {
  if [[ -n "$(ls -A "$PGDATA")" ]]; then
    note "$PGDATA holds an unfinished initdb (interrupted?): removing it and initialising again"
    find "$PGDATA" -mindepth 1 -delete
  fi
  note "initialising PostgreSQL cluster in $PGDATA"
  local flags=(--encoding=UTF8 --locale=C --username=postgres
    --auth-local=trust --auth-host=scram-sha-256)
  [[ "$PG_FAST" == 1 ]] && flags+=(--no-sync)
  as_pg "$PGBIN/initdb" -D "$PGDATA" "${flags[@]}" </dev/null >>"$PG_LOG" 2>&1 9>&- \
    || { tail_log "$PG_LOG"; die "initdb failed (log: $PG_LOG)"; }
  # local socket: trust, but the socket dir is 0700 so only $PG_USER_OS/root get in.
  printf "\n# added by deploy/services.sh\ninclude_if_exists = 'wafleet.conf'\n" >>"$PGDATA/postgresql.conf"
}

pg_psql_admin() { # run SQL as the superuser over the private unix socket
  as_pg "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$PGSOCK" -p "$PG_PORT" -U postgres -d postgres "$@" </dev/null 9>&-
}

pg_ensure_role_db() {
  pg_psql_admin -c "DO \$\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_ROLE') THEN
        CREATE ROLE $DB_ROLE LOGIN CREATEDB PASSWORD '$DB_PASS';
      END IF;
    END \$\$;" >>"$PG_LOG" 2>&1 || { tail_log "$PG_LOG"; die "could not create role $DB_ROLE"; }
  if [[ "$(pg_psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" 2>>"$PG_LOG")" != 1 ]]; then
    pg_psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_ROLE" >>"$PG_LOG" 2>&1 \
      || { tail_log "$PG_LOG"; die "could not create database $DB_NAME"; }
  fi
}

pg_port_free() { # dies when another program holds the port
  if pg_ready; then
    die_port_taken "$PG_PORT" WAFLEET_PG_PORT "a PostgreSQL that is not this checkout's (not the cluster in $PGDATA)"
  fi
  if port_taken "$PG_PORT"; then die_port_taken "$PG_PORT" WAFLEET_PG_PORT "another program"; fi
}

PG_ACTION=""
pg_start() {
  pg_ensure_installed
  pg_ensure_user
  pg_resolve_paths create
  local owner=(); [[ $EUID -eq 0 ]] && owner=("$PG_USER_OS:$PG_USER_OS")
  local base; base="$(dirname "$PGDATA")"
  if [[ "$base" != "$STATE" ]]; then mkdir -p "$base"; [[ -n "${owner[*]}" ]] && chown "${owner[@]}" "$base"; chmod 0700 "$base"; fi
  mkdir -p "$PGDATA" "$PGSOCK"
  [[ -n "${owner[*]}" ]] && chown "${owner[@]}" "$PGDATA" "$PGSOCK"
  chmod 0700 "$PGDATA" "$PGSOCK"
  touch "$PG_LOG"

  local pid want
  want="$(pg_conf_text)"
  if pid="$(pg_our_pid)"; then
    if [[ "$want" == "$(cat "$PGDATA/wafleet.conf" 2>/dev/null)" ]]; then
      local i
      for ((i = 0; i < 600; i++)); do pg_ready && break; sleep 0.1; done
      pg_ready || { tail_log "$PG_LOG"; die "postgres (pid $pid) runs but does not answer on 127.0.0.1:$PG_PORT"; }
      pg_ensure_role_db
      PG_ACTION=reused
      return 0
    fi
    # Moving to another port: make sure it is free before stopping the running one.
    [[ "$(sed -n 4p "$PGDATA/postmaster.pid" 2>/dev/null)" == "$PG_PORT" ]] || pg_port_free
    note "postgres config changed (port / WAFLEET_PG_FAST?), restarting"
    pg_stop_quiet
  else
    pg_port_free
  fi
  pg_initialised || pg_initdb
  pg_clear_stale
  printf '%s\n' "$want" >"$PGDATA/wafleet.conf"
  [[ -n "${owner[*]}" ]] && chown "${owner[@]}" "$PGDATA/wafleet.conf"
  # stdout/stderr of the postmaster go to $PG_LOG, opened here (by us), so the
  # log can live in a dir $PG_USER_OS cannot reach.
  as_pg "$PGBIN/pg_ctl" start -D "$PGDATA" -w -t 120 -s </dev/null >>"$PG_LOG" 2>&1 9>&- \
    || { tail_log "$PG_LOG"; die "postgres failed to start (log: $PG_LOG)"; }
  pg_ready || { tail_log "$PG_LOG"; die "postgres started but does not answer on 127.0.0.1:$PG_PORT"; }
  pg_ensure_role_db
  PG_ACTION=started
}

pg_stop_quiet() {
  local pid
  pid="$(pg_our_pid)" || return 1
  as_pg "$PGBIN/pg_ctl" stop -D "$PGDATA" -m fast -w -t 60 -s </dev/null >>"$PG_LOG" 2>&1 9>&- \
    || as_pg "$PGBIN/pg_ctl" stop -D "$PGDATA" -m immediate -w -t 30 -s </dev/null >>"$PG_LOG" 2>&1 9>&- \
    || { kill -KILL "$pid" 2>/dev/null || true; }
  wait_gone "$pid" 30 || true
}

pg_stop() {
  if ! pg_resolve_paths || ! pg_find_bin; then note "postgres not running (not set up)"; return 0; fi
  if pg_stop_quiet; then note "postgres stopped"; else note "postgres not running"; fi
}

pg_status() {
  if ! pg_resolve_paths; then echo "postgres: stopped  (not initialised yet, port $PG_PORT)"; return 1; fi
  local pid
  if pid="$(pg_our_pid)"; then
    if pg_find_bin && pg_ready; then
      echo "postgres: running  127.0.0.1:$PG_PORT  pid $pid  data $PGDATA"
    else
      local port
      port="$(sed -n 4p "$PGDATA/postmaster.pid" 2>/dev/null)"
      echo "postgres: running (pid $pid, port ${port:-?}) but NOT answering on 127.0.0.1:$PG_PORT  data $PGDATA"
      return 1
    fi
  else
    echo "postgres: stopped  (port $PG_PORT, data $PGDATA)"
    return 1
  fi
}

# ---------------------------------------------------------------- commands

# Shell-quoted (single quotes), so eval is safe whatever the checkout's path holds.
shq() { local s="${1//\'/\'\\\'\'}"; printf "'%s'" "$s"; }
# The socket path as a URL path: the characters a URL would read otherwise, escaped.
url_path() { local s="${1//%/%25}"; s="${s// /%20}"; s="${s//#/%23}"; printf '%s' "${s//\?/%3F}"; }

print_env() {
  echo "export REDIS_URL=$(shq "redis://127.0.0.1:$REDIS_PORT")"
  # Only when the running Redis listens on it (one started before it was configured does not).
  if [[ -n "$REDIS_SOCKET" && -S "$REDIS_SOCKET" ]]; then
    echo "export REDIS_UNIX_URL=$(shq "unix://$(url_path "$REDIS_SOCKET")")"
  fi
  echo "export DATABASE_URL=$(shq "postgres://$DB_ROLE:$DB_PASS@127.0.0.1:$PG_PORT/$DB_NAME")"
}

cmd="${1:-}"
case "$cmd" in
  up)
    take_lock
    missing=()
    redis_bins || missing+=(redis-server redis-tools)
    pg_find_bin || missing+=(postgresql)
    # Not a service, but the one build tool a Rust install may lack: the worker's allocator
    # (jemalloc) is compiled with make, and every recipe brings the services up before building.
    command -v make >/dev/null || missing+=(make)
    # And deploy/run.sh's demo prints with python3, which minimal Debian images lack.
    command -v python3 >/dev/null || missing+=(python3)
    ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
    redis_start
    pg_start
    note "up: redis 127.0.0.1:$REDIS_PORT ($REDIS_ACTION), postgres 127.0.0.1:$PG_PORT ($PG_ACTION)"
    ;;
  down)
    take_lock
    redis_stop
    pg_stop
    ;;
  status)
    rc=0
    redis_status || rc=3
    pg_status || rc=3
    exit "$rc"
    ;;
  env) print_env ;;
  redis-start)
    take_lock
    redis_start
    note "redis 127.0.0.1:$REDIS_PORT ($REDIS_ACTION)"
    ;;
  redis-stop) take_lock; redis_stop ;;
  pg-start)
    take_lock
    pg_start
    note "postgres 127.0.0.1:$PG_PORT ($PG_ACTION)"
    ;;
  pg-stop) take_lock; pg_stop ;;
  destroy)
    take_lock
    redis_stop
    pg_stop
    if pg_resolve_paths && [[ "$PGDATA" != "$STATE/pg" ]]; then rm -rf "$(dirname "$PGDATA")"; fi
    rm -rf "$REDIS_DIR" "$STATE/pg" "$STATE/pg-socket" "$PG_PATHFILE" "$STATE"/*.log
    note "destroyed service data of $ROOT"
    ;;
  -h | --help | help) usage ;;
  "") usage >&2; exit 2 ;;
  *) echo "services.sh: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
esac
