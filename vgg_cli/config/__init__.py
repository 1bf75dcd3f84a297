"""The config: its schema and rules (``schema``), where values come from (``sources``: defaults, YAML, overrides,
the rename map) and ``default.yaml``, which documents every key. Imports nothing of vgg but ``errors`` and ``fsio``."""
