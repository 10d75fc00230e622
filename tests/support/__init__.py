"""Helpers shared by the tests (importable because pyproject puts tests/ on sys.path)."""
