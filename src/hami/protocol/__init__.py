"""HAMi v2.10 wire formats: annotation keys, node/pod/lock/handshake codecs, quantities.

Everything here is pure: strings in, typed values out (and back). Decoders raise
:class:`ProtocolError` with a message that names the field and the reason.
"""

from hami.protocol.errors import ProtocolError

__all__ = ["ProtocolError"]
