"""Infrastructure every stage uses: the config loader, errors, file helpers, names, provenance, ONNX Runtime helpers."""
