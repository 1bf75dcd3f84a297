"""Reading a trained run back to label images: ``predict`` (with TTA) and ``gradcam``."""
