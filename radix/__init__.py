"""radixgen.radix: the KV memory pools, the slot allocator and the radix-tree prefix cache that indexes them.

Imports nothing from the other radixgen packages (see DESIGN.md, "Dependency direction").
"""

from radixgen.radix.memory_pool import ReqToTokenPool, TokenSlotAllocator, TokenToKVPool
from radixgen.radix.radix_cache import (
    BasePrefixCache,
    MatchResult,
    NoReuseCache,
    RadixCache,
    TreeNode,
    create_prefix_cache,
)

__all__ = [
    "BasePrefixCache",
    "MatchResult",
    "NoReuseCache",
    "RadixCache",
    "ReqToTokenPool",
    "TokenSlotAllocator",
    "TokenToKVPool",
    "TreeNode",
    "create_prefix_cache",
]
