"""What vgg runs on: the Keras backend (``backend``), devices and precision (``device``), distribution
(``distribute``), the compile cache, fast weight initialisation and every patch of Keras internals (``keras_fixes``)."""
