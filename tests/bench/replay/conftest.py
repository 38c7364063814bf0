"""The replay tests share the runtime tests' tiny dummy-weights engine."""

from tests.runtime.conftest import tiny_engine  # noqa: F401  (a fixture, used by name)
