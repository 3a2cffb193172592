"""Release pipeline: official MODNet checkpoint -> ONNX -> VACC fp16 / int8 engines, with measured accuracy."""
