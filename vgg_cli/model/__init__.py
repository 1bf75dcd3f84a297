"""The network: custom layers (``layers``; importing this package registers them, so user code that loads a
``.keras`` file of vgg's needs only ``import vgg_cli.model``), metrics, optimizer and schedules, weights, the build
(``build``) and loading a saved model (``load``)."""

from vgg_cli.model import layers as _layers  # noqa: F401  (registers the custom layers with Keras)
