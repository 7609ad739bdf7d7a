"""The architectures of bench/corpus.py: how to build each one at random
init, the example inputs it is exported with, and its calibration samples.

Every entry gives a ``torch.nn.Module`` whose ``forward`` takes positional
tensors and returns a tensor or a tuple of tensors, and ``inputs(rng)``: one
sample as a list of numpy arrays, batch 1, in that order (the exported
model's inputs). Images are N(0, 1) (normalized), token ids uniform in the
vocabulary, audio N(0, 0.1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

VOCAB = 1000
SEQ = 16


@dataclass(frozen=True)
class Entry:
    """One architecture: ``family`` is ``classification``, ``detection``,
    ``segmentation`` or ``transformers``."""

    name: str
    family: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[np.random.Generator], list[np.ndarray]]
    input_names: tuple[str, ...]


def import_torchvision():
    """torchvision, imported. Where its native ops cannot load (a wheel built
    for another torch, e.g. CUDA torchvision beside CPU torch), the schemas
    of ``torchvision::nms`` and ``qnms`` are declared first so that the
    import (which registers their fake kernels) succeeds; the models that
    call those ops then fail at export, and say so."""
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        schema = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", schema)
        import torchvision
    return torchvision


def torchvision_has_ops() -> bool:
    return import_torchvision().extension._has_ops()


def _image(size: int) -> Callable[[np.random.Generator], list[np.ndarray]]:
    return lambda rng: [rng.standard_normal((1, 3, size, size)).astype(np.float32)]


def _tokens(count: int = 1) -> Callable[[np.random.Generator], list[np.ndarray]]:
    return lambda rng: [rng.integers(0, VOCAB, (1, SEQ), dtype=np.int64) for _ in range(count)]


class _First(torch.nn.Module):
    """The first output of a model that returns a tuple, a dict or a
    transformers ModelOutput (logits or the last hidden state)."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...] = (),
                 key: str | None = None) -> None:
        super().__init__()
        self.model, self.names, self.key = model, names, key

    def forward(self, *xs):
        out = self.model(**dict(zip(self.names, xs))) if self.names else self.model(*xs)
        if self.key is not None:
            return out[self.key]
        return out[0] if isinstance(out, (tuple, list)) else out.to_tuple()[0]


class _Detections(torch.nn.Module):
    """A torchvision detector on one [1, 3, H, W] image: boxes, scores, labels."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        found = self.model(list(x))[0]
        return found["boxes"], found["scores"], found["labels"]


def _classifier(name: str) -> Entry:
    size = 299 if name == "inception_v3" else 224

    def build():
        tv = import_torchvision()
        kwargs = {"aux_logits": False, "init_weights": True} if name in (
            "inception_v3", "googlenet") else {}
        return tv.models.get_model(name, weights=None, **kwargs)

    return Entry(name, "classification", build, _image(size), ("image",))


def _detector(name: str, size: int) -> Entry:
    def build():
        tv = import_torchvision()
        return _Detections(tv.models.get_model(name, weights=None, weights_backbone=None))

    return Entry(name, "detection", build, _image(size), ("image",))


def _segmenter(name: str) -> Entry:
    def build():
        tv = import_torchvision()
        return _First(tv.models.get_model(name, weights=None, weights_backbone=None),
                      key="out")

    return Entry(name, "segmentation", build, _image(224), ("image",))


def classifiers() -> list[Entry]:
    """Every classification model of torchvision."""
    tv = import_torchvision()
    return [_classifier(n) for n in tv.models.list_models(module=tv.models)]


DETECTION = [("fasterrcnn_mobilenet_v3_large_320_fpn", 320),
             ("ssdlite320_mobilenet_v3_large", 320), ("retinanet_resnet50_fpn", 320)]
SEGMENTATION = ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]


# ------------------------------------------------------------- transformers

_TEXT = {"vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 64}


def _hf(name: str, build: Callable[[], torch.nn.Module], inputs, names) -> Entry:
    def wrapped():
        model = build()
        model.config.use_cache = False
        return _First(model, names)

    return Entry(name, "transformers", wrapped, inputs, names)


def _bert():
    import transformers as tf
    return tf.BertForSequenceClassification(tf.BertConfig(**_TEXT))


def _roberta():
    import transformers as tf
    return tf.RobertaForSequenceClassification(tf.RobertaConfig(**_TEXT, pad_token_id=1))


def _distilbert():
    import transformers as tf
    return tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
        vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
        max_position_embeddings=64))


def _gpt2():
    import transformers as tf
    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                            n_positions=64, use_cache=False))


def _t5():
    import transformers as tf
    return tf.T5ForConditionalGeneration(tf.T5Config(
        vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        use_cache=False))


def _bart():
    import transformers as tf
    return tf.BartForConditionalGeneration(tf.BartConfig(
        vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_ffn_dim=128, max_position_embeddings=64, use_cache=False))


_VISION = {"image_size": 32, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "intermediate_size": 128, "num_labels": 10}


def _vit():
    import transformers as tf
    return tf.ViTForImageClassification(tf.ViTConfig(**_VISION))


def _deit():
    import transformers as tf
    return tf.DeiTForImageClassification(tf.DeiTConfig(**_VISION))


def _swin():
    import transformers as tf
    return tf.SwinForImageClassification(tf.SwinConfig(
        image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
        window_size=4, num_labels=10))


def _convnext():
    import transformers as tf
    return tf.ConvNextForImageClassification(tf.ConvNextConfig(
        hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=10))


def _whisper():
    import transformers as tf
    return tf.WhisperForConditionalGeneration(tf.WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_ffn_dim=128, max_source_positions=50, max_target_positions=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        use_cache=False))


def _wav2vec2():
    import transformers as tf
    return tf.Wav2Vec2ForCTC(tf.Wav2Vec2Config(
        vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4))


def _mel(rng: np.random.Generator) -> list[np.ndarray]:
    features = rng.standard_normal((1, 80, 100)).astype(np.float32)
    return [features, rng.integers(0, VOCAB, (1, SEQ), dtype=np.int64)]


def _audio(rng: np.random.Generator) -> list[np.ndarray]:
    return [(0.1 * rng.standard_normal((1, 4000))).astype(np.float32)]


def _pixels(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.standard_normal((1, 3, 32, 32)).astype(np.float32)]


def transformers_models() -> list[Entry]:
    """Small random-init models of ``transformers``: encoders, decoders,
    encoder-decoders; text, vision, audio."""
    ids, seq2seq = ("input_ids",), ("input_ids", "decoder_input_ids")
    return [
        _hf("hf_bert", _bert, _tokens(), ids),
        _hf("hf_roberta", _roberta, _tokens(), ids),
        _hf("hf_distilbert", _distilbert, _tokens(), ids),
        _hf("hf_gpt2", _gpt2, _tokens(), ids),
        _hf("hf_t5", _t5, _tokens(2), seq2seq),
        _hf("hf_bart", _bart, _tokens(2), seq2seq),
        _hf("hf_vit", _vit, _pixels, ("pixel_values",)),
        _hf("hf_deit", _deit, _pixels, ("pixel_values",)),
        _hf("hf_swin", _swin, _pixels, ("pixel_values",)),
        _hf("hf_convnext", _convnext, _pixels, ("pixel_values",)),
        _hf("hf_whisper", _whisper, _mel, ("input_features", "decoder_input_ids")),
        _hf("hf_wav2vec2", _wav2vec2, _audio, ("input_values",)),
    ]


def corpus() -> list[Entry]:
    """Every entry, in the bench's order."""
    return (classifiers() + [_detector(n, s) for n, s in DETECTION]
            + [_segmenter(n) for n in SEGMENTATION] + transformers_models())
