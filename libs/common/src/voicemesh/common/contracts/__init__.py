"""The mesh's contracts: what travels between services, defined once.

Events, subjects, streams and consumers, tool models, ids, errors, tenancy and the audio
frame. Nothing here opens a connection; every service and tool agrees through these.
"""
