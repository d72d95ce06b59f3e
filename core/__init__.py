"""The layer below everything: errors, data paths, environment settings, the Redis connection and lease.

Imports only the standard library and redis-py (lazily), so `sessions/`, `indexer/` and `workbench/` all
depend on it and it depends on none of them.
"""
