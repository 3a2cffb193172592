"""Reference backend on ONNX Runtime (any CPU): an fp16 model, or an int8 model quantized the way vamc does.

vamc's quantizer descends from TVM's relay quantize (docs/quantization.md); this backend reproduces it on
ONNX Runtime so that the effect of a quantization config can be seen without a card:
- numbering.py: which Conv a skip_conv_layers index means (vamc's post-order numbering, or ONNX order);
- stats.py: max |x| and the 8001-bin histogram of every tensor to quantize, streamed over the calibration set;
- thresholds.py: a threshold per tensor from those statistics, for each calibrate_mode;
- qdq.py: the Q/DQ model, quantized where TVM quantizes;
- fp16.py: the float16 model.
- bias_correction.py: the float model with its Convs' biases corrected for int8's mean shift;
- build.py: ties them together (int8_model: a config's Q/DQ model, which tune scores too) and writes the engine
  folder; runner.py runs the result.
"""
