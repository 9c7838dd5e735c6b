"""The mesh runtime: how every voicemesh service connects, delivers, publishes and runs.

One ``connect()`` for NATS, one delivery policy, one JetStream publisher, one service
skeleton. Built on ``voicemesh.common.contracts``.
"""
