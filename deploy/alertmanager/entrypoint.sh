#!/bin/sh
# Renders the Alertmanager configuration template with the webhook URL from the environment,
# then runs the given command (docker-compose.yml: the alertmanager binary on the result).
#   ALERTMANAGER_WEBHOOK_URL  where alerts are POSTed (required; never echoed)
#   ALERTMANAGER_TEMPLATE     default /etc/alertmanager/alertmanager.yml
#   ALERTMANAGER_CONFIG       default /tmp/alertmanager.yml
set -eu

template=${ALERTMANAGER_TEMPLATE:-/etc/alertmanager/alertmanager.yml}
config=${ALERTMANAGER_CONFIG:-/tmp/alertmanager.yml}
url=${ALERTMANAGER_WEBHOOK_URL:-}

fail() {
  echo "alertmanager entrypoint: $*" >&2
  exit 1
}

[ -n "$url" ] || fail "ALERTMANAGER_WEBHOOK_URL is not set (see .env.example)"
case "$url" in
  http://* | https://*) ;;
  *) fail "ALERTMANAGER_WEBHOOK_URL must start with http:// or https://" ;;
esac
# The URL lands inside a single-quoted YAML string: refuse what could break out of it.
case "$url" in
  *"'"* | *" "* | *"
"*) fail "ALERTMANAGER_WEBHOOK_URL contains a quote, space or newline: percent-encode it" ;;
esac

# Plain text replacement (awk's gsub would treat & and \ in the URL specially).
ALERTMANAGER_WEBHOOK_URL=$url awk '
  BEGIN { key = "${ALERTMANAGER_WEBHOOK_URL}"; value = ENVIRON["ALERTMANAGER_WEBHOOK_URL"] }
  {
    line = $0; out = ""
    while ((i = index(line, key)) > 0) {
      out = out substr(line, 1, i - 1) value
      line = substr(line, i + length(key))
    }
    print out line
  }
' "$template" >"$config.tmp"
mv "$config.tmp" "$config"

exec "$@"
