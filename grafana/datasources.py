"""The datasources dashboards and alert rules reference: the fixed UIDs that
``grafana/provisioning/datasources/runwatch.yml`` provisions (tests/grafana checks both agree)."""

from __future__ import annotations

from grafana_foundation_sdk.models.dashboard import DataSourceRef

INFLUXDB_UID = "runwatch-influxdb"
PROMETHEUS_UID = "runwatch-prometheus"
INFLUXDB_TYPE = "influxdb"
PROMETHEUS_TYPE = "prometheus"

# Grafana's server-side expressions (alert rules' reduce/threshold/math steps).
EXPRESSION_UID = "__expr__"
EXPRESSION_TYPE = "__expr__"

# The folder of the dashboards provider (grafana/provisioning/dashboards/runwatch.yml);
# alert rules are stored in the same folder.
FOLDER = "runwatch"


def influxdb() -> DataSourceRef:
    return DataSourceRef(type_val=INFLUXDB_TYPE, uid=INFLUXDB_UID)


def prometheus() -> DataSourceRef:
    return DataSourceRef(type_val=PROMETHEUS_TYPE, uid=PROMETHEUS_UID)


def expression() -> DataSourceRef:
    return DataSourceRef(type_val=EXPRESSION_TYPE, uid=EXPRESSION_UID)
