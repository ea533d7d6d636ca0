"""A Django Channels layer for Redis Cluster on sharded pub/sub (Redis 7+).

``BACKEND: "channels_redis_cluster.RedisClusterChannelLayer"``; see :mod:`.layer`.
"""

from .layer import RedisClusterChannelLayer

__all__ = ["RedisClusterChannelLayer"]
__version__ = "0.1.0"
