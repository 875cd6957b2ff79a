"""Files: atomic writes, the run lock, content digests and JSON lines."""
