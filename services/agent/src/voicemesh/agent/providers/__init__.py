"""Providers of speech to text, dialog and text to speech, behind one interface (``base``)."""
