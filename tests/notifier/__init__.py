"""Notifier tests. A package on purpose: its conftest is then `notifier.conftest`, and does not
take the module name `conftest` that tests/integration's modules import their lab from."""
