"""Engine backends: `ort` (reference, ONNX Runtime) and `vamc` (vendor compiler), each a folder with its build.py
and runner.py; engine.py is what every build shares (dispatch, input checks, the base manifest), runners.py
which runner an engine needs. Kept empty: a runner is imported to evaluate an engine, and that must not import
the build path (Make would rebuild evaluations whenever quantization code changes).
"""
