"""Serving turns to other processes: engine workers fed through a Redis Stream (issue 19).

Below workbench/: uses sessions/ and core/, never textual. The wire format is in docs/serve.md.
"""
