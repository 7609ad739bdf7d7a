"""PyTorch to an INT8 ONNX model that ONNX Runtime runs: export, quantize, run.

``torch.onnx.export`` in torch 2.13 uses the dynamo-based exporter, which needs the
``onnxscript`` package: ``pip install "onnxquant[cpu,torch]"`` installs both
(torch==2.13.0, onnxscript==0.7.2) with ONNX Runtime.

Usage: python examples/torch_export.py [OUTPUT_FOLDER]   (default: the current folder)
"""

import os
import sys

import onnxruntime as ort
import torch

import onnxquant as oq


def export_quantize_run(net: torch.nn.Module, images: torch.Tensor, folder: str):
    """Exports ``net`` (batch dim dynamic), quantizes it on ``images`` and runs the INT8
    model on them in ONNX Runtime; returns its outputs and onnxquant's report."""
    fp32 = os.path.join(folder, "model.onnx")
    int8 = os.path.join(folder, "model.int8.onnx")
    torch.onnx.export(net.eval(), (images[:1],), fp32, input_names=["image"],
                      output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    samples = ({"image": image[None].numpy()} for image in images)  # one sample per image
    report = oq.quantize_model(fp32, int8, samples)
    session = ort.InferenceSession(int8, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images.numpy()})[0], report


if __name__ == "__main__":
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 4))
    images = torch.rand(64, 3, 16, 16)
    int8_logits, report = export_quantize_run(net, images, sys.argv[1] if len(sys.argv) > 1
                                              else ".")
    with torch.no_grad():
        fp32_logits = net(images).numpy()
    print(report)
    print(f"max |INT8 - FP32| = {abs(int8_logits - fp32_logits).max():.4f} "
          f"(FP32 logits span {fp32_logits.max() - fp32_logits.min():.4f})")
    print(f"top-1 agreement: {(int8_logits.argmax(1) == fp32_logits.argmax(1)).mean():.1%}")
