"""The codec's one error type."""


class CodecError(ValueError):
    """Raised for any datagram or body that cannot be decoded or encoded.

    Decoders raise only this (never IndexError, struct.error, UnicodeDecodeError, ...).
    """
