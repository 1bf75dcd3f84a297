"""The config: its schema (``schema``, built of ``fields``), the rules across keys (``rules``), where values come
from (``sources``: defaults, YAML, overrides, the rename map; ``habits``: hints for other tools' keys), what makes
two trainings the same job (``digest``) and ``default.yaml``, which documents every key. Imports nothing of vgg but
``errors``."""
