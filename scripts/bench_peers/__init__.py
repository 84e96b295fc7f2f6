"""Peer servers that scripts/bench compares edge against (see scripts/bench.py)."""
