"""Dataset indexing (scan), image decoding (images), batching (pipeline) and the frozen-prefix feature cache
(features)."""
