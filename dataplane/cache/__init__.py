"""The shared cache: a memory-mapped file in /dev/shm (shared_cache.py) holding, per worker,
a ring of fixed-size blocks (ring.py) with generation-validated reads from any process.

Reading order: shared_cache → ring.
"""

from streamvault.client.protocol.sizes import parse_size
from streamvault.dataplane.cache.ring import BlockRing
from streamvault.dataplane.cache.shared_cache import BlockRef, SharedCache

__all__ = ["BlockRef", "BlockRing", "SharedCache", "parse_size"]
