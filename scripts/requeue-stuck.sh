#!/usr/bin/env bash
# Moves the jobs held by dead image-worker consumers back to the job queue.
#
# A consumer is dead when the liveness key of its host has expired. Its processing list is
# emptied one element at a time by an atomic script that moves the element (RPOPLPUSH) and
# counts the recovery, so a crash of this script loses nothing and moves nothing twice. The
# worker fails a job recovered more than poison_limit times as "poison".
set -eu

usage() {
  cat <<'TEXT'
Usage: requeue-stuck.sh [--redis URL] [--prefix P] [--hash-tag] [--dry-run]

Finds every image-worker processing list whose host has no live liveness key and moves its jobs
back to the job queue, counting a recovery for each. Lists of live hosts are never touched.

  --redis URL   Redis to use [default: $IMAGE_WORKER_REDIS or redis://127.0.0.1:6379]
  --prefix P    key prefix of the deployment [default: image]
  --hash-tag    the deployment writes its prefix as {P} (Redis Cluster)
  --dry-run     only say what would move
  -h, --help    this text

Needs only redis-cli.
TEXT
}

# Atomically: move the oldest job of KEYS[1] to KEYS[2], count its recovery in KEYS[3] and
# remember the stage its consumer had reached (ARGV[1]) in KEYS[4].
readonly MOVE_ONE="
local payload = redis.call('RPOPLPUSH', KEYS[1], KEYS[2])
if not payload then return 0 end
redis.call('HINCRBY', KEYS[3], payload, 1)
if ARGV[1] ~= '' then redis.call('HSET', KEYS[4], payload, ARGV[1]) end
return 1"

say() { printf '%s\n' "$*"; }
die() { printf 'requeue-stuck: %s\n' "$*" >&2; exit 1; }

rcli() {
  redis-cli -u "$redis_url" --no-auth-warning "$@"
}

processing_lists() {
  {
    rcli SMEMBERS "${prefix}_worker:consumers"
    rcli --scan --pattern "${prefix}_jobs:processing:*"
  } | sed '/^$/d' | sort -u
}

host_is_alive() {
  [ "$(rcli EXISTS "${prefix}_worker:alive:$1")" = "1" ]
}

requeue_list() {
  local list=$1 consumer host stage moved=0 held
  consumer=${list#"${prefix}_jobs:processing:"}
  host=${consumer%:*}
  held=$(rcli LLEN "$list")
  if host_is_alive "$host"; then
    say "live   $list ($held held; host $host is alive): untouched"
    return 0
  fi
  if [ "$dry_run" = yes ]; then
    say "dead   $list: would move $held jobs to ${prefix}_jobs"
    return 0
  fi
  stage=$(rcli HGET "${prefix}_worker:stage" "$consumer")
  while [ "$(rcli EVAL "$MOVE_ONE" 4 "$list" "${prefix}_jobs" \
      "${prefix}_worker:recoveries" "${prefix}_worker:last_stage" "$stage")" = "1" ]; do
    moved=$((moved + 1))
  done
  rcli SREM "${prefix}_worker:consumers" "$list" >/dev/null
  rcli HDEL "${prefix}_worker:stage" "$consumer" >/dev/null
  say "dead   $list: moved $moved jobs to ${prefix}_jobs (last stage: ${stage:-unknown})"
}

main() {
  redis_url=${IMAGE_WORKER_REDIS:-redis://127.0.0.1:6379}
  prefix=image
  dry_run=no
  local hash_tag=no
  while [ $# -gt 0 ]; do
    case "$1" in
      -h|--help) usage; return 0 ;;
      --redis) [ $# -ge 2 ] || die "--redis needs a URL"; redis_url=$2; shift ;;
      --prefix) [ $# -ge 2 ] || die "--prefix needs a value"; prefix=$2; shift ;;
      --hash-tag) hash_tag=yes ;;
      --dry-run) dry_run=yes ;;
      *) usage >&2; return 2 ;;
    esac
    shift
  done
  if [ "$hash_tag" = yes ]; then prefix="{$prefix}"; fi
  command -v redis-cli >/dev/null || die "redis-cli is missing (Debian package redis-tools)"
  [ "$(rcli PING)" = "PONG" ] || die "redis at $redis_url does not answer PING"

  local list found=no
  while IFS= read -r list; do
    found=yes
    requeue_list "$list"
  done < <(processing_lists)
  if [ "$found" = no ]; then say "no processing lists"; fi
}

main "$@"
