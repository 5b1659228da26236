"""modeldist's test suite (a package so helpers import as ``tests.models`` from any test file)."""
