"""Quantization analysis and tuning (`python -m pipeline analyze`, `python -m pipeline tune`; docs/tuning.md).

Both stand on the reference backend's quantizer (backends/ort): one statistics collection over the calibration
set, thresholds for any calibrate mode from it, and the Q/DQ writer. Every candidate is a Q/DQ model written from
those thresholds, scored with ONNX Runtime on validation images against fp32's predictions.
- split.py: the validation images (outside the calibration subset, by its seeded rule);
- candidates.py: a candidate's settings, the quantizer that writes its model, the cache of scored candidates;
- scoring.py: fp32 predictions once, a candidate's figures and their change against fp32;
- layers.py: per-Conv analysis (thresholds, weight / single / entire SQNR, the effect of keeping one float);
- search.py: the bounded search over calibrations and skipped layers (pure: no files, no models);
- plot.py: the PNGs, drawn with OpenCV;
- analyze.py, tune.py: the two stages and their outputs; tuned_yaml.py: the config they hand back (its header);
- promote.py: where `make tune` may copy that config (TUNED_CONFIG), checked before tuning starts.
"""
