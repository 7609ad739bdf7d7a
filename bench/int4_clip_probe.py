"""Would another int4 clip search help the w4a8 recipe? A probe, not a technique.

For each Conv weight channel, the clip t in {max|w| * k / 100, k = 10..100} that minimises
either the weights' squared int4 error (``unweighted``, what ``weight_range="mse"`` does) or
that error weighted per input channel by the mean square of the layer's input on 64
calibration images (``activation-weighted``: the diagonal of the layer's output error,
sum_c E[x_c^2] sum_taps dw^2). The float weights are clipped to t (so min-max then gives the
scale t / 7) after CLE and before bias correction, and the model quantized as ``w4a8`` does
(int4 per-channel weights, MIN_MAX_ASYM on the first 200 calibration images). Top-1 on 2 000
test images drawn with numpy.random.default_rng(0), default session; in brackets the paired
difference to ``w4a8`` without a clip (CLE, bias correction) ± its standard error.

    PYTHONPATH=python .venv/bin/python bench/int4_clip_probe.py resnet8 cifar-resnet ...
"""

import os
import sys

import numpy as np
import onnx
import onnx.numpy_helper as onh
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import onnxquant as oq  # noqa: E402
from accuracy_lib.classifiers import MODELS  # noqa: E402
from accuracy_lib.common import DEFAULT_ZOO  # noqa: E402
from onnxquant import recovery  # noqa: E402
from onnxquant._recovery_runs import _with_outputs  # noqa: E402
from onnxquant.quantize import upgrade_for_int4  # noqa: E402
from recovery import cell, correct  # noqa: E402

ort.set_default_logger_severity(3)


def input_energy(model, x, names):
    """Per tensor of ``names``: the mean square of each channel over ``x``."""
    m = _with_outputs(model, names)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = s.run(names, {s.get_inputs()[0].name: x})
    return {n: np.mean(v.astype(np.float64) ** 2, axis=(0, 2, 3)) for n, v in zip(names, outs)}


def clip_model(model, x, weighted=True):
    """``model`` with each Conv weight channel clipped to its chosen t; the counts of
    channels clipped and of all channels."""
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits]
    energy = input_energy(model, x, sorted({n.input[0] for n in convs}))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    new = {}
    clipped = total = 0
    for n in convs:
        w = onh.to_array(inits[n.input[1]]).astype(np.float64)
        g = next((a.i for a in n.attribute if a.name == "group"), 1)
        m_out, cpg = w.shape[0], w.shape[1]
        e = energy[n.input[0]]
        w2 = w.copy()
        for o in range(m_out):
            k = o // (m_out // g)
            ec = e[k * cpg:(k + 1) * cpg][:, None, None] if weighted else 1.0
            wo = w[o]
            mx = np.abs(wo).max()
            if mx == 0:
                continue
            best, bt = None, mx
            for step in range(10, 101):
                t = mx * step / 100
                s = t / 7
                d = wo - np.clip(np.round(wo / s), -7, 7) * s
                c = float(np.sum(ec * d * d))
                if best is None or c <= best:
                    best, bt = c, t
            total += 1
            clipped += bt < mx * 0.999
            w2[o] = np.clip(wo, -bt, bt)
        new[n.input[1]] = w2.astype(np.float32)
    for t in out.graph.initializer:
        if t.name in new:
            t.CopyFrom(onh.from_array(new[t.name], t.name))
    return out, clipped, total


def run(key: str) -> None:
    options = oq.QuantOptions(weight_type="int4")
    entry = MODELS[key](DEFAULT_ZOO)
    test = entry.test.subset(2000)
    samples = [entry.calibration[i:i + 1] for i in range(200)]
    equalized, _ = recovery.equalize_cross_layer(oq.optimize_model(entry.path))

    def finish(model):
        """Bias correction, calibration and int4 quantization; per test image, correct."""
        model, _ = recovery.correct_bias(upgrade_for_int4(model), samples, options=options)
        cal = oq.Calibrator(model, "MIN_MAX_ASYM", options=options)
        cal.collect_data(samples)
        quantized = oq.quantize(model, cal.compute_range(), options=options, calibrator=cal)
        return correct(quantized, test.x, test.y)

    base = finish(equalized)
    x = np.concatenate(samples[:64])
    weighted, c1, t1 = clip_model(equalized, x, True)
    plain, c2, t2 = clip_model(equalized, x, False)
    print(f"| {entry.name} | {100 * base.mean():.2f} | {cell(finish(weighted), base)} "
          f"({c1} of {t1} clipped) | {cell(finish(plain), base)} ({c2} of {t2}) |", flush=True)


def main() -> None:
    print("| model | w4a8 | activation-weighted clip | unweighted clip |")
    print("|---|---:|---:|---:|")
    for key in sys.argv[1:]:
        run(key)


if __name__ == "__main__":
    main()
