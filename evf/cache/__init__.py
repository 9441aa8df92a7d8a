"""The embedding cache: the frozen SAM image encoder run once per image, its features on disk.

* `keys`: what identifies cached features (`CacheKey`: backend, weights hash, preprocessing,
  feature shapes) and each image (`pixel_hash`); `CacheError`, `CacheMismatchError`.
* `store`: the sharded, memory-mapped on-disk format (`ShardWriter`, `EmbeddingStore`).
* `builder`: plan a datamodule's images and encode one shard (``evf cache-embeddings``,
  `evf.tools.cache_embeddings`).
* `training`: the checks and checkpoint record of `EVFSAMModule` in cache mode.

Training reads the store through ``data.init_args.embedding_cache``; see docs/embedding-cache.md.
"""

from evf.cache.keys import CacheError, CacheKey, CacheMismatchError, cache_key, pixel_hash
from evf.cache.store import EmbeddingStore, ShardWriter

__all__ = [
    "CacheError",
    "CacheKey",
    "CacheMismatchError",
    "EmbeddingStore",
    "ShardWriter",
    "cache_key",
    "pixel_hash",
]
