"""The one error type raised by the wire codecs."""


class ProtocolError(ValueError):
    """A wire value (annotation, quantity, encoded device list) could not be decoded."""
