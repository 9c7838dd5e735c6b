"""Root conftest: every test in the repository gets voicemesh's real-server fixtures."""

pytest_plugins = ["voicemesh.testkit.fixtures"]
