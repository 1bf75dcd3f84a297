"""The command line: thin Click commands that parse, call one function and print (``main`` is the entry point).
No module here imports TensorFlow or Keras at import time, so ``vgg --help`` is instant."""
