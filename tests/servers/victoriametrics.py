"""Fixture for victoriametrics (see tests/servers/__init__.py)."""
