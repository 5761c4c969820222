"""Reliability and security: interrupted, failing and hostile inputs lose nothing (issue 8)."""
