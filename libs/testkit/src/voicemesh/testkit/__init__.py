"""voicemesh.testkit: what the tests, benches and local tools share; never installed in an image.

* ``fixtures``: the pytest plugin (real nats-server, Redis, PostgreSQL, service processes,
  an OTLP receiver) loaded by the root ``conftest.py``;
* ``embedded``: nats-server and redis-server from wheels, for the fixtures and
  ``voicemesh up``.
"""
