"""Linear probes, tables and figures: the paper's evaluation protocol (docs/probes.md)."""
