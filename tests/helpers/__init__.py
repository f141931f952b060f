"""Helpers shared by the tests, one module per concern; conftest.py holds only fixtures."""
