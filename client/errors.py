"""The client's typed errors (the one tree lives in the wire protocol package)."""

from streamvault.client.protocol.errors import *  # noqa: F403
from streamvault.client.protocol.errors import ERRORS_BY_CODE, StreamVaultError

__all__ = [cls.__name__ for cls in ERRORS_BY_CODE.values()] + ["StreamVaultError"]
