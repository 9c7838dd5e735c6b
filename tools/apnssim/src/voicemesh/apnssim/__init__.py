"""voicemesh apnssim: an APNs simulator.

HTTP/2 over TLS; validates requests as Apple does and answers with Apple's statuses.
"""

__all__: list[str] = []
