"""Grafana provisioning that docker-compose.yml wires up: datasources with fixed UIDs whose
settings come from the environment the compose service gives Grafana, and the dashboards
provider pointing where compose mounts the generated dashboards."""

from __future__ import annotations

import re
from typing import Any

from tests.deploy._deploy import COMPOSE_FILE, REPO, load_yaml

PROVISIONING = REPO / "grafana" / "provisioning"
DATASOURCE_FILES = sorted((PROVISIONING / "datasources").glob("*.yml"))
PROVIDER_FILES = sorted((PROVISIONING / "dashboards").glob("*.yml"))
EXPECTED_UIDS = {
    "influxdb": "runwatch-influxdb",
    "prometheus": "runwatch-prometheus",
    "alertmanager": "runwatch-alertmanager",
}
_GRAFANA_ENV = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def grafana_service() -> dict[str, Any]:
    service: dict[str, Any] = load_yaml(COMPOSE_FILE)["services"]["grafana"]
    return service


def datasources() -> list[dict[str, Any]]:
    return [ds for path in DATASOURCE_FILES for ds in load_yaml(path)["datasources"]]


def test_one_datasource_per_type_with_its_fixed_uid() -> None:
    by_type = {ds["type"]: ds for ds in datasources()}
    assert len(by_type) == len(datasources())
    assert {t: ds["uid"] for t, ds in by_type.items()} == EXPECTED_UIDS
    assert [ds["name"] for ds in datasources() if ds.get("isDefault")] == ["InfluxDB"]


def test_influxdb_is_in_flux_mode_with_settings_from_the_environment() -> None:
    [influx] = [ds for ds in datasources() if ds["type"] == "influxdb"]
    assert influx["jsonData"]["version"] == "Flux"
    assert influx["jsonData"]["organization"] == "${INFLUXDB_ORG}"
    assert influx["jsonData"]["defaultBucket"] == "${INFLUXDB_BUCKET}"
    assert influx["secureJsonData"] == {"token": "${INFLUXDB_TOKEN}"}
    assert "token" not in influx["jsonData"]


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings_in(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


# Set by deploy/check-secrets.sh, Grafana's entrypoint wrapper, from a file compose names.
SET_BY_ENTRYPOINT = {"INFLUXDB_TOKEN": "RUNWATCH_INFLUXDB_TOKEN_FILE"}


def test_every_variable_is_set_by_the_compose_service() -> None:
    environment = grafana_service()["environment"]
    for path in [*DATASOURCE_FILES, *PROVIDER_FILES]:
        for braced, plain in _GRAFANA_ENV.findall("\n".join(strings_in(load_yaml(path)))):
            name = braced or plain
            source = SET_BY_ENTRYPOINT.get(name, name)
            assert source in environment, f"{path.name} reads ${name}, which compose does not set"
    wrapper = (REPO / "deploy" / "check-secrets.sh").read_text()
    for name, source in SET_BY_ENTRYPOINT.items():
        assert f'{name}=$(cat "${source}")' in wrapper and f"export {name}" in wrapper


def test_datasource_urls_name_compose_services() -> None:
    environment = grafana_service()["environment"]
    services = set(load_yaml(COMPOSE_FILE)["services"])
    for ds in datasources():
        variable = _GRAFANA_ENV.fullmatch(ds["url"])
        assert variable, f"{ds['name']}: url must come from the environment"
        url = environment[variable.group(1) or variable.group(2)]
        host = re.match(r"https?://([^:/]+)", url)
        assert host and host.group(1) in services, url


def test_dashboard_provider_reads_what_compose_mounts() -> None:
    mounts = {
        target: source
        for source, target, *_ in (str(v).split(":") for v in grafana_service()["volumes"])
    }
    [provider] = [p for path in PROVIDER_FILES for p in load_yaml(path)["providers"]]
    assert provider["type"] == "file"
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert provider["allowUiUpdates"] is False


def test_provisioning_files_declare_api_version_1() -> None:
    for path in [*DATASOURCE_FILES, *PROVIDER_FILES]:
        assert load_yaml(path)["apiVersion"] == 1, path
    assert DATASOURCE_FILES and PROVIDER_FILES
