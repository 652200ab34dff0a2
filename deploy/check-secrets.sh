#!/bin/sh
# Entrypoint wrapper of the runwatch stack's services (docker-compose.yml): refuses to start a
# service whose secrets are unset or still .env.example's placeholders (compose's `:?` only sees
# unset ones), then runs the service's own entrypoint ("$@"). Values are never echoed.
#   RUNWATCH_SECRETS              variables that must be set and not a change-me placeholder
#   RUNWATCH_ADMIN_USERS          user-name variables that must not be admin, root or a placeholder
#   RUNWATCH_TOKEN_DIRS           (influxdb) directories deploy/influxdb/init-tokens.sh writes to
#   RUNWATCH_INFLUXDB_TOKEN_FILE  (grafana) exported as INFLUXDB_TOKEN for the datasource
set -eu

problems=""
problem() { problems="${problems:+$problems; }$1"; }
fail() {
  echo "runwatch: refusing to start: $*" >&2
  exit 2
}

for name in ${RUNWATCH_SECRETS:-}; do
  eval "value=\${$name-}"
  case "$value" in
    "") problem "$name is not set" ;;
    *[Cc][Hh][Aa][Nn][Gg][Ee]-[Mm][Ee]* | *[Cc][Hh][Aa][Nn][Gg][Ee][Mm][Ee]*)
      problem "$name is still the .env.example placeholder" ;;
  esac
done
for name in ${RUNWATCH_ADMIN_USERS:-}; do
  eval "value=\${$name-}"
  case "$value" in
    "") problem "$name is not set" ;;
    admin | Admin | ADMIN | root | *[Cc][Hh][Aa][Nn][Gg][Ee]-[Mm][Ee]*)
      problem "$name must not be admin, root or the placeholder" ;;
  esac
done
[ -z "$problems" ] || fail "$problems (set them in .env, see .env.example)"

for dir in ${RUNWATCH_TOKEN_DIRS:-}; do
  mkdir -p "$dir"
  # The image's entrypoint drops to the influxdb user before running the init scripts.
  if [ "$(id -u)" = 0 ] && id influxdb >/dev/null 2>&1; then chown influxdb: "$dir"; fi
done

if [ -n "${RUNWATCH_INFLUXDB_TOKEN_FILE:-}" ]; then
  [ -s "$RUNWATCH_INFLUXDB_TOKEN_FILE" ] ||
    fail "no InfluxDB token in $RUNWATCH_INFLUXDB_TOKEN_FILE (deploy/influxdb/init-tokens.sh writes it at InfluxDB's first start)"
  INFLUXDB_TOKEN=$(cat "$RUNWATCH_INFLUXDB_TOKEN_FILE")
  export INFLUXDB_TOKEN
fi

exec "$@"
