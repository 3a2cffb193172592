"""Quantization analysis and tuning (`python -m pipeline analyze`, `python -m pipeline tune`; docs/tuning.md).

Both stand on the reference backend's quantizer (backends/ort): one statistics collection over the calibration
set, thresholds for any calibrate mode from it, and the Q/DQ writer. Every candidate is a Q/DQ model written from
those thresholds, scored with ONNX Runtime on selection images against fp32's predictions.
- split.py: the selection and confirmation images (outside the calibration subset, by its seeded rule), extra images;
- statistics.py: seeded paired studentized bootstrap bounds and p-values, Holm's correction (pure);
- candidates.py: a candidate's settings, the quantizer that writes its model, the cache of scored candidates;
- scoring.py: per-image figures of a candidate (deviation from fp32, ground truth) and their summary with bounds;
- layers.py: per-Conv analysis (thresholds, weight / single / entire SQNR, the effect of keeping one float);
- search.py: the bounded search over calibrations and skipped layers, and the choice (pure: no files, no models);
- plot.py: the PNGs, drawn with OpenCV;
- analyze.py, tune.py: the two stages and their outputs; tuned_yaml.py: the config they hand back (its header);
- promote.py: where `make tune` may copy that config (TUNED_CONFIG), checked before tuning starts.
"""
