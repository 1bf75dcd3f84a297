"""Dataset indexing (scan), image decoding (images) and batching (pipeline)."""
