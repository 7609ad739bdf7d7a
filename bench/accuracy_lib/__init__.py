"""The modules of bench/accuracy.py (INT8 accuracy of onnxquant against ONNX Runtime)."""
