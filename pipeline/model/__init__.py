"""MODNet itself: the module tree, loading the official checkpoint, export to ONNX, FLOPs."""
