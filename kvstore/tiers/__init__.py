"""The block store's tiers, fastest first: this process's memory, the disk, Redis."""

from kvstore.tiers.disk import DiskTier
from kvstore.tiers.memory import MemoryTier

__all__ = ["DiskTier", "MemoryTier"]
