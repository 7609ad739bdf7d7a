"""Transformers through quantization: BERT and GPT-2 of ``transformers`` at
random initialisation (hidden 128, 4 heads, 2 layers, vocabulary 1 000),
exported by torch's TorchScript exporter (opset 17, batch 4 x 64 tokens);
a BERT with outlier channels injected (3 LayerNorm gamma channels x20-50);
a BERT with peaked attention (query and key weights x4, as trained
attention is peaked and random attention nearly uniform); and the trained
ViT of ``models/cifar``; static and dynamic modes.

For each model and input set (padded: sentences of random lengths 8..64,
right-padded to 64 with an attention mask; unpadded: every sentence 64
tokens long), every mode's output is compared with FP32's, by cosine
(flattened over the positions that are not padding), under ONNX Runtime's
default session options (fused integer kernels, the headline) and with
``disable_quant_qdq`` (QDQ emulated in float; dynamic models have no QDQ, so
the column stays empty); for the ViT also top-1 on 2 000 CIFAR-10 test
images (calibrated on 256 others). ``int8 MACs`` is
:func:`onnxquant.analysis.mac_share` of MatMul/Gemm; ``ms``: median latency
of one batch on one thread, fused: the median of 40 interleaved rounds
(every session once a round, best of 3), as other jobs share this machine.
The MACs are counted on shapes from ONNX Runtime's symbolic shape
inference. Modes:

- ``static``: Calibrator (MIN_MAX_ASYM or the method given) and quantize with
  the defaults (``masks="float"``: the nodes that handle float32's extremes
  stay float);
- ``static, masks saturate``: the extremes left out of the ranges, the mask's
  nodes quantized all the same;
- ``static, attention float``: ``quantize_activation_matmul=False``: the
  MatMuls of two activations (Q.K^T and softmax.V) stay float, and with
  them the Softmax's output, whose uint8 quantization ``oq.analyze`` finds
  to lose most (``worst_tensors`` in the JSON: the six tensors of the
  static model with the lowest accumulated SQNR, on two evaluation
  batches);
- ``static, MatMul/Gemm only``: ``op_types=("MatMul", "Gemm")``: the
  residual Adds that feed LayerNormalization (and the bias Adds) stay float
  as well;
- ``static, auto promotion``: :func:`onnxquant.mixed_precision` with
  ``candidates="auto"`` on the static model: the LayerNormalization and
  Softmax neighbours whose accumulated SQNR drop dominates (the analysis, on
  4 calibration batches) go first, then the layers by output SQNR gain,
  promoted to int16 until 100 x the output cosine to FP32 on the calibration
  batches is within ``--budget`` (default 0.01: cosine 0.9999) of 100, at
  most ``--max-share`` (default 0.25) of the candidates; the JSON row lists
  what was promoted and why (``promoted``);
- ``dynamic``: :func:`onnxquant.quantize_dynamic` (portable weights,
  [-63, 63]);
- ``dynamic, attention float``: the same with
  ``quantize_activation_matmul=False``;
- ``ORT dynamic``: ``onnxruntime.quantization.quantize_dynamic`` (its
  defaults: int8 weights per tensor), same model and data.

It prints one JSON line per row, then the Markdown table of docs/accuracy.md.
Run (about 10 minutes on two cores)::

    PYTHONPATH=python nice -n 10 .venv/bin/python bench/transformers_accuracy.py \\
        --output bench/results/transformers_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnxquant as oq
from onnxquant.analysis import mac_counts, mac_share

ROOT = Path(__file__).resolve().parent.parent
BATCH, SEQ, VOCAB = 4, 64, 1000
TEXT = {"vocab_size": VOCAB, "hidden_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 512, "max_position_embeddings": SEQ}


# ------------------------------------------------------------------- models

def _transformers():
    """transformers, imported after torchvision's native ops are declared
    where they cannot load (bench/corpus_models.py)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from corpus_models import import_torchvision
    import_torchvision()
    import transformers
    return transformers


class _Text:
    """A transformers model as (input_ids, attention_mask) -> first output.

    For a decoder, the [B, S] mask becomes the additive [B, 1, S, S] mask its
    attention adds to its scores (0 where attended, float32's lowest where
    not, causal), as transformers builds it; built here because
    transformers 4.57 builds a decoder's with torch.vmap, which the
    TorchScript exporter cannot trace. BERT builds its own, (1 - mask) *
    float32's lowest."""

    def __init__(self, model, causal: bool):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask):
                if not causal:  # BERT's eager path builds it without vmap
                    return self.inner(input_ids=input_ids, attention_mask=attention_mask)[0]
                keep = attention_mask[:, None, None, :].bool()
                n = input_ids.shape[1]
                keep = keep & torch.ones(n, n, dtype=torch.bool).tril()[None, None]
                lowest = torch.finfo(torch.float32).min
                additive = (1.0 - keep.float()) * lowest
                return self.inner(input_ids=input_ids, attention_mask=additive)[0]

        self.module = Wrapped(model).eval()


def _bert(outliers: bool, sharp: bool = False):
    import torch
    tf = _transformers()
    torch.manual_seed(0)
    model = tf.BertModel(tf.BertConfig(**TEXT, attn_implementation="eager"))
    if sharp:
        # Random attention is nearly uniform, so a mask that wipes out the
        # scores costs little; trained attention is peaked. Query and key
        # weights x4 make the scores' spread 16x.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".query." in name or ".key." in name:
                    p *= 4.0
    if outliers:
        # Trained transformers have a few LayerNorm channels far larger than
        # the rest; random ones do not: enlarge 3 channels' gamma 20-50x, in
        # every LayerNorm but the last (whose outlier channels would then
        # dominate the output and its cosine).
        rng = np.random.default_rng(1)
        last = f"encoder.layer.{TEXT['num_hidden_layers'] - 1}.output.LayerNorm.weight"
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "LayerNorm.weight" in name and name != last:
                    for c, f in zip((5, 77, 100), rng.uniform(20, 50, 3)):
                        p[c] *= float(f)
    return _Text(model, causal=False).module


def _gpt2():
    import torch
    tf = _transformers()
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(
        vocab_size=VOCAB, n_embd=128, n_layer=2, n_head=4, n_positions=SEQ,
        use_cache=False, attn_implementation="eager"))
    return _Text(model, causal=True).module


def _export_text(module, path: Path) -> None:
    import torch
    ids = torch.zeros((BATCH, SEQ), dtype=torch.int64)
    mask = torch.ones((BATCH, SEQ), dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(module, (ids, mask), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["out"])


def _text_batches(rng, count: int, padded: bool) -> list[dict[str, np.ndarray]]:
    batches = []
    for _ in range(count):
        ids = rng.integers(1, VOCAB, (BATCH, SEQ), dtype=np.int64)
        lengths = rng.integers(8, SEQ + 1, BATCH) if padded else np.full(BATCH, SEQ)
        mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
        ids[mask == 0] = 0
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def _vit_batches(count: int, offset: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """``count`` batches of 16 CIFAR-10 test images from ``offset``, and
    their labels."""
    sys.path.insert(0, str(ROOT))
    from models.cifar import data
    images, labels = data.load_test()
    x = data.preprocess(images[offset:offset + count * 16])
    return ([{"image": x[i * 16:(i + 1) * 16]} for i in range(count)],
            np.asarray(labels[offset:offset + count * 16]))


def _top1(outputs: list[np.ndarray], labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    return 100 * float(np.mean(np.concatenate(outputs).argmax(axis=1) == labels))


# -------------------------------------------------------------- measurement

def _session(model, emulated: bool = False, threads: int = 1):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if emulated:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _outputs(session, batches) -> list[np.ndarray]:
    return [session.run(None, b)[0] for b in batches]


def _cosine(reference, outputs, batches) -> float:
    """Cosine over the positions that are not padding."""
    a, b = [], []
    for r, o, feed in zip(reference, outputs, batches):
        keep = feed["attention_mask"].astype(bool) if "attention_mask" in feed else \
            np.ones(r.shape[:1], bool)
        a.append(r[keep].ravel())
        b.append(o[keep].ravel())
    a, b = np.concatenate(a).astype(np.float64), np.concatenate(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every tensor's shape in value_info, by ONNX Runtime's
    symbolic shape inference (ONNX's stops at the ViT's Shape -> Reshape
    chains, and mac_share counts only nodes whose shapes are known)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    return SymbolicShapeInference.infer_shapes(model, auto_merge=True)


def _matmul_share(shaped: onnx.ModelProto, quantized: onnx.ModelProto, report) -> float:
    """The share of the MatMul/Gemm MACs that run in INT8 (mac_share's, the
    Conv of a patch embedding left out)."""
    share = mac_share(shaped, quantized, report)
    counts, unknown = mac_counts(shaped)
    if unknown:
        raise RuntimeError(f"MACs unknown for {unknown}")
    ops = {n.name: n.op_type for n in shaped.graph.node}
    total = sum(c for n, c in counts.items() if ops[n] in ("MatMul", "Gemm"))
    left = sum(c for n, c in share.float_nodes.items() if ops[n] in ("MatMul", "Gemm"))
    return (total - left) / total


def _latencies_ms(sessions: dict, batch, rounds: int = 40) -> dict[str, float]:
    """Median over interleaved rounds (each session runs once per round, the
    best of 3), so that load from other jobs falls on every session alike."""
    for session in sessions.values():
        session.run(None, batch)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            best = np.inf
            for _ in range(3):
                start = time.perf_counter()
                session.run(None, batch)
                best = min(best, time.perf_counter() - start)
            times[key].append(best)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}


def _worst_tensors(model, quantized, samples, calibrator, count: int = 6) -> list[dict]:
    """The tensors of the static model with the lowest accumulated SQNR
    (oq.analyze), where the error comes from."""
    records = oq.analyze(model, quantized, samples, calibrator=calibrator, warn=False,
                         methods=(calibrator.method.name,))
    worst = sorted(records, key=lambda r: r.accumulated_db)[:count]
    return [{"tensor": r.tensor, "op_type": r.op_type, "accumulated_db": r.accumulated_db,
             "alone_db": r.alone_db} for r in worst]


def _static(model, calib, method, keep: bool = False, **options):
    options = oq.QuantOptions(**options)
    calibrator = oq.Calibrator(model, method, options=options)
    calibrator.collect_data(calib)
    quantized, report = oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                                    options=options, return_report=True)
    if keep:
        return quantized, report, calibrator.report, calibrator
    return quantized, report, calibrator.report


def _auto_promotion(model, calib, calibrator, budget: float, max_share: float):
    """oq.mixed_precision(candidates="auto") on the static model, the metric
    100 x the cosine to FP32 on the calibration batches; returns (model,
    report, promotions)."""
    reference = _outputs(_session(model), calib)

    def metric(m) -> float:
        return 100.0 * _cosine(reference, _outputs(_session(m), calib), calib)

    result = oq.mixed_precision(model, calibrator, calib[:4], metric, budget=budget,
                                max_share=max_share, candidates="auto")
    quantized, report = oq.quantize(model, calibrator.compute_range(), calibrator=calibrator,
                                    options=result.options, return_report=True)
    promoted = [{"name": p.node, "kind": p.kind, "op_type": p.op_type, "reason": p.reason}
                for p in result.promoted]
    neighbours = [r.node for r in result.ranking if r.kind == "tensor"]
    return quantized, report, {"promoted": promoted, "neighbours": neighbours,
                               "candidates": len(result.ranking),
                               "metric": [result.fp32_metric, result.base_metric,
                                          result.final_metric]}


def _ort_dynamic(model, workdir: Path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    src, dst = workdir / "fp32.onnx", workdir / "ort_dynamic.onnx"
    onnx.save(model, str(src))
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return onnx.load(str(dst))


def measure(name: str, fp32_path: Path, sets: dict, method: str, workdir: Path,
            only_modes: list[str] | None = None, analyze: bool = True,
            budget: float = 0.01, max_share: float = 0.25) -> list[dict]:
    # Static input shapes (the batch's), so that mac_share can count MACs.
    feed = next(iter(sets.values()))[0][0]
    raw = onnx.load(str(fp32_path))
    for value in raw.graph.input:
        for dim, size in zip(value.type.tensor_type.shape.dim, feed[value.name].shape):
            dim.dim_value = size
    model = oq.optimize_model(raw)
    shaped = _with_shapes(model)
    rows = []
    for set_name, (calib, evaluation, *labels) in sets.items():
        labels = labels[0] if labels else None
        fp32 = _session(model)
        reference = _outputs(fp32, evaluation)
        sessions = {"FP32": fp32}
        modes = {}
        q, rep, cal, cal_obj = _static(model, calib, method, keep=True)
        modes["static"] = (q, rep)
        # getattr: the "static" mode also runs on onnxquant before masks.
        masks = [{"tensor": c.tensor, "share": round(c.share, 4)} for c in cal.nonfinite
                 if getattr(c, "saturating", 0)]
        wanted = only_modes or MODES
        if masks and "static, masks saturate" in wanted:
            modes["static, masks saturate"] = _static(model, calib, method,
                                                      masks="saturate")[:2]
        if "static, attention float" in wanted:
            modes["static, attention float"] = _static(
                model, calib, method, quantize_activation_matmul=False)[:2]
        if "static, MatMul/Gemm only" in wanted:
            modes["static, MatMul/Gemm only"] = _static(model, calib, method,
                                                        op_types=("MatMul", "Gemm"))[:2]
        auto = None
        if "static, auto promotion" in wanted:
            promoted_model, promoted_report, auto = _auto_promotion(
                model, calib, cal_obj, budget, max_share)
            modes["static, auto promotion"] = (promoted_model, promoted_report)
        if "dynamic" in wanted:
            modes["dynamic"] = (oq.quantize_dynamic(model), None)
        if "dynamic, attention float" in wanted:
            modes["dynamic, attention float"] = (
                oq.quantize_dynamic(model, quantize_activation_matmul=False), None)
        if "ORT dynamic" in wanted:
            modes["ORT dynamic"] = (_ort_dynamic(model, workdir), None)
        worst = _worst_tensors(model, q, evaluation[:2], cal_obj) if analyze else None
        for mode, (quantized, report) in modes.items():
            fused = sessions[mode] = _session(quantized)
            fused_outputs = _outputs(fused, evaluation)
            dynamic = "dynamic" in mode
            row = {"model": name, "inputs": set_name, "mode": mode,
                   "cosine_fused": _cosine(reference, fused_outputs, evaluation),
                   "top1_fused": _top1(fused_outputs, labels),
                   "top1_fp32": _top1(reference, labels),
                   "cosine_emulated": None if dynamic else _cosine(
                       reference, _outputs(_session(quantized, emulated=True), evaluation),
                       evaluation),
                   "int8_mac_share": None, "masks": masks if mode == "static" else None,
                   "worst_tensors": worst if mode == "static" else None,
                   "auto_promotion": auto if mode == "static, auto promotion" else None}
            if mode != "ORT dynamic":
                row["int8_mac_share"] = _matmul_share(shaped, quantized, report)
            rows.append(row)
        latency = _latencies_ms(sessions, evaluation[0])
        for row in rows[-len(modes):]:
            row["ms"], row["fp32_ms"] = latency[row["mode"]], latency["FP32"]
            print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    """The table of docs/accuracy.md."""
    def f(v, digits=4):
        return "—" if v is None else f"{v:.{digits}f}"

    lines = ["| model | inputs | mode | cosine fused | cosine emulated | MatMul/Gemm MACs INT8 "
             "| top-1 (FP32) | ms (FP32 ms) |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = "—" if r["int8_mac_share"] is None else f"{100 * r['int8_mac_share']:.1f} %"
        top1 = "—" if r.get("top1_fused") is None else \
            f"{r['top1_fused']:.2f} ({r['top1_fp32']:.2f})"
        lines.append(f"| {r['model']} | {r['inputs']} | {r['mode']} | {f(r['cosine_fused'])} "
                     f"| {f(r['cosine_emulated'])} | {share} | {top1} "
                     f"| {r['ms']:.2f} ({r['fp32_ms']:.2f}) |")
    return "\n".join(lines)


MODES = ["static", "static, masks saturate", "static, attention float",
         "static, MatMul/Gemm only", "static, auto promotion", "dynamic",
         "dynamic, attention float", "ORT dynamic"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--method", default="MIN_MAX_ASYM")
    parser.add_argument("--only", nargs="*", default=None,
                        help="bert, bert_outliers, bert_sharp, gpt2, vit")
    parser.add_argument("--modes", nargs="*", default=None, choices=MODES,
                        help="default: all ('static' alone runs on onnxquant before this "
                             "bench, for a baseline)")
    parser.add_argument("--budget", type=float, default=0.01,
                        help="auto promotion: 100 x cosine below FP32's 100 allowed on the "
                             "calibration batches (default 0.01)")
    parser.add_argument("--max-share", type=float, default=0.25,
                        help="auto promotion: the largest share of candidates promoted")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        builders = {"bert": lambda: _bert(False), "bert_outliers": lambda: _bert(True),
                    "bert_sharp": lambda: _bert(False, sharp=True), "gpt2": _gpt2}
        for name, build in builders.items():
            if args.only and name not in args.only:
                continue
            path = workdir / f"{name}.onnx"
            _export_text(build(), path)
            rng = np.random.default_rng(0)  # the same sentences for every model
            sets = {padded: (_text_batches(rng, 16, padded == "padded"),
                             _text_batches(rng, 8, padded == "padded"))
                    for padded in ("padded", "unpadded")}
            rows += measure(name, path, sets, args.method, workdir, args.modes,
                            budget=args.budget, max_share=args.max_share)
        if not args.only or "vit" in args.only:
            # Calibration: test images 0..255; evaluation: 2 000 others.
            calib, _ = _vit_batches(16, 0)
            evaluation, labels = _vit_batches(125, 5000)
            sets = {"images": (calib, evaluation, labels)}
            rows += measure("vit (models/cifar)", ROOT / "models/cifar/vit.onnx", sets,
                            args.method, workdir, args.modes, budget=args.budget,
                            max_share=args.max_share)
    if args.output:
        args.output.write_text(json.dumps({"method": args.method, "rows": rows}, indent=1))
    print(markdown(rows))


if __name__ == "__main__":
    main()
