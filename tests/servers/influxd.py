"""Fixture for influxd (see tests/servers/__init__.py)."""
