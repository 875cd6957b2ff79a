"""Measurements of the mechanism: linear probes, effective rank, the depth analysis (docs/protocols.md §9)."""
