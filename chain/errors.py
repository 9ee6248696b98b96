"""The chain package's root exception."""


class ChainError(Exception):
    """Anything the chain package cannot do, with a message that says what to fix."""
