"""The task: what "one label per image" means to the rest of the package, as NumPy (no framework import), so the
readers that must stay light (the NumPy prediction engine, calibration, the label-issue search) share it with
training: the logits layer's name, its weights digest, the output activation (``head``)."""
