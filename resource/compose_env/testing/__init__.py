"""Test-only parts of the package: only entry points and tests import them, never a production module
(test_import_rules)."""
