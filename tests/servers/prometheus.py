"""Fixture for prometheus (see tests/servers/__init__.py)."""
