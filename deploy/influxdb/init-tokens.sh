#!/bin/sh
# Runs once, at InfluxDB's first setup: the influxdb image runs /docker-entrypoint-initdb.d/*.sh
# with the influx CLI configured with the operator token and DOCKER_INFLUXDB_INIT_ORG_ID /
# DOCKER_INFLUXDB_INIT_BUCKET_ID set. Creates the two tokens the stack hands out, each for the
# training bucket only, and writes each where only its service reads it (never echoed):
#   write-only  $RUNWATCH_TRAINER_TOKEN_DIR/token   trainers (INFLUXDB_V2_TOKEN_FILE)
#   read-only   $RUNWATCH_GRAFANA_TOKEN_DIR/token   Grafana's InfluxDB datasource
# The operator token (DOCKER_INFLUXDB_INIT_ADMIN_TOKEN) stays with InfluxDB and its operator.
set -eu

create() { # ACTION DIRECTORY DESCRIPTION
  token=$(influx auth create --org-id "$DOCKER_INFLUXDB_INIT_ORG_ID" \
    "--$1-bucket" "$DOCKER_INFLUXDB_INIT_BUCKET_ID" --description "$3" --hide-headers |
    awk -F '\t' 'NR == 1 { print $3 }')
  if [ -z "$token" ]; then
    echo "init-tokens: influx auth create gave no token for $3" >&2
    exit 1
  fi
  (umask 022 && printf '%s\n' "$token" >"$2/token.tmp")
  mv "$2/token.tmp" "$2/token"
}

create write "$RUNWATCH_TRAINER_TOKEN_DIR" "runwatch trainers: write $DOCKER_INFLUXDB_INIT_BUCKET"
create read "$RUNWATCH_GRAFANA_TOKEN_DIR" "runwatch Grafana: read $DOCKER_INFLUXDB_INIT_BUCKET"
echo "init-tokens: write-only and read-only tokens for bucket $DOCKER_INFLUXDB_INIT_BUCKET created"
