//! The trainer: ResNets in candle, datasets, training loop and ONNX export.
