"""voicemesh command line: ``voicemesh up`` runs the local stack; ``streams apply``
provisions JetStream; ``docs`` exports the wire contract's JSON Schemas."""

__all__: list[str] = []
