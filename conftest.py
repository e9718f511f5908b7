"""Root conftest: the hostkit test kit for the host tests and every plugin's tests."""

pytest_plugins = ["hostkit.testing"]
