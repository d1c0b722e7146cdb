"""The service fixtures of tests/app, for the fuzz tests."""

from tests.app.conftest import client, settings  # noqa: F401
