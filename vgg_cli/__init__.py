"""vgg: a command-line transfer-learning trainer for VGG16/VGG19.

Importing this package must stay cheap: no TensorFlow or Keras here.
"""

__version__ = "0.1.0"
