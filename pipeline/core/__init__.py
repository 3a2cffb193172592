"""Infrastructure every stage uses: the config loader, the output layout, errors, file helpers, names, provenance,
ONNX Runtime helpers, the progress protocol, and the code each stage imports (deps.py, for Make)."""
