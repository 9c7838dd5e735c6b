"""voicemesh.testkit: what the tests, benches and local tools share; never installed in an image.

* ``fixtures``: the pytest plugin (real nats-server, Redis, PostgreSQL, service processes,
  an OTLP receiver) loaded by the root ``conftest.py``;
* ``embedded``: nats-server and redis-server from wheels, for the fixtures and
  ``voicemesh up``;
* ``whip``: the one WHIP client (the phone, ``voicemesh call``, the tests and benches);
* ``tracks``: tone, WAV and spoken-caller audio tracks paced in real time;
* ``fakes``: stand-ins for the tool services, answering with the contract's own models;
* ``agent``: helpers for driving the agent over its media subjects;
* ``mesh``: NATS as the services meet it (connections through the runtime's ``connect``,
  provisioned streams, events published with the services' message ids, a nats-server
  loaded with the deployed permission file);
* ``events``: wire events as the services publish them (transcript segments, a mix of
  every audited kind);
* ``apns``: push's APNs credentials directory, written for a test's own keys;
* ``results``: sections of ``bench/results/*.json`` written by tests in any order.

No production package imports it (``tests/test_layers.py``), and no image installs it
(``make images-check``).
"""
