"""Fixture for postgres (see tests/servers/__init__.py)."""
