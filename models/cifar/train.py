"""Train one of the CIFAR-10 models of ``models/cifar/nets.py`` on the CPU, then export it.

Usage (from the repository root)::

    python -m models.cifar.train --model resnet|mobilenetv2|efficientnet|convnext|vit \\
        [--minutes N | --epochs N] [--zoo ../shared/zoo] [--no-export]

Data: the 45 000 training images of ``data.load_train_val`` (5 000 held out for validation), with
random 32x32 crops of the 4-pixel zero-padded image and horizontal flips, done on uint8 arrays;
batches of 128; label smoothing 0.1; bfloat16 autocast or channels_last, whichever ran faster for
the model (the weights stay float32, and the exported model is float32); one CPU thread (see
``NUM_THREADS``); ``torch.manual_seed(0)`` and ``numpy.random.default_rng(0)``.

Schedule: one cycle (linear warm-up, then cosine decay to zero). With ``--minutes`` (default 14) the
schedule runs on wall-clock time: the learning rate is a function of the elapsed fraction of the
budget and training stops when the budget is spent, so the schedule always completes, however busy
the (shared) CPU is; the number of epochs done is recorded. With ``--epochs`` it runs on steps
instead, which is reproducible step for step.

The trained weights are saved to ``$TMPDIR/onnxquant_cifar/<model>.pt``; then ``export.py`` writes
``models/cifar/<model>.onnx``, ``<model>.dynamo.onnx`` and ``<model>.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import tempfile
import time

import numpy as np
import torch
from models.cifar import data, nets
from torch import nn

SEED = 0
# One thread: on a CPU shared with other jobs, two OpenMP threads spin at every barrier while the
# other is descheduled; measured here, 1 thread ran 2.2 training steps/s and 2 threads 0.09.
NUM_THREADS = 1
BATCH_SIZE = 128
LABEL_SMOOTHING = 0.1
PAD = 4

# Per model: optimizer, peak learning rate, weight decay, warm-up fraction of the one-cycle
# schedule, and the faster CPU execution measured for it (bfloat16 autocast on AMX; channels_last,
# which speeds up depthwise convolutions about twofold, where bfloat16 slows them down).
RECIPES: dict[str, dict] = {
    "resnet": {"opt": "sgd", "lr": 0.2, "wd": 5e-4, "warmup": 0.2,
               "bf16": True, "channels_last": False},
    "mobilenetv2": {"opt": "sgd", "lr": 0.2, "wd": 1e-4, "warmup": 0.2,
                    "bf16": False, "channels_last": True},
    "efficientnet": {"opt": "sgd", "lr": 0.2, "wd": 1e-4, "warmup": 0.2,
                     "bf16": False, "channels_last": True},
    "convnext": {"opt": "adamw", "lr": 2e-3, "wd": 0.05, "warmup": 0.15,
                 "bf16": True, "channels_last": False},
    "vit": {"opt": "adamw", "lr": 1e-3, "wd": 0.05, "warmup": 0.15,
            "bf16": True, "channels_last": False},
}


def checkpoint_path(model_name: str) -> str:
    """Where the trained weights of ``model_name`` are kept (outside the repository)."""
    return os.path.join(tempfile.gettempdir(), "onnxquant_cifar", f"{model_name}.pt")


class Augmenter:
    """Random crop (4-pixel zero padding) and horizontal flip of uint8 NHWC batches, vectorised."""

    def __init__(self, images: np.ndarray, rng: np.random.Generator) -> None:
        self.padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
        self.rng = rng
        self.size = images.shape[1]

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        n, s = len(idx), self.size
        oy = self.rng.integers(0, 2 * PAD + 1, n)
        ox = self.rng.integers(0, 2 * PAD + 1, n)
        flip = self.rng.random(n) < 0.5
        ar = np.arange(s)
        rows = oy[:, None] + ar
        cols = ox[:, None] + np.where(flip[:, None], s - 1 - ar, ar)
        return self.padded[idx[:, None, None], rows[:, :, None], cols[:, None, :]]


def to_input(x_uint8: np.ndarray) -> torch.Tensor:
    """Torch version of ``data.preprocess`` (uint8 NHWC -> normalised float32 NCHW)."""
    x = torch.from_numpy(x_uint8).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(data.CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data.CIFAR_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def one_cycle(progress: float, warmup: float) -> float:
    """Learning-rate factor at ``progress`` in [0, 1]: linear warm-up, then cosine decay to 0."""
    if progress < warmup:
        return 0.04 + 0.96 * progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / (1.0 - warmup))))


def make_optimizer(model: nn.Module, recipe: dict) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; no weight decay on biases, norms, layer scales, positions."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    other = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe["wd"]},
              {"params": other, "weight_decay": 0.0}]
    if recipe["opt"] == "sgd":
        return torch.optim.SGD(groups, lr=recipe["lr"], momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=recipe["lr"], betas=(0.9, 0.999))


def train(model: nn.Module, recipe: dict, x: np.ndarray, y: np.ndarray,
          rng: np.random.Generator, seconds: float | None, epochs: int | None) -> dict:
    """Train ``model`` in place for ``seconds`` of wall time or ``epochs``; return statistics."""
    if recipe["channels_last"]:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    augment = Augmenter(x, rng)
    labels = torch.from_numpy(y.astype(np.int64))
    steps_per_epoch = len(x) // BATCH_SIZE  # the last partial batch is dropped
    total_steps = epochs * steps_per_epoch if epochs else None
    step = 0
    start = time.perf_counter()
    model.train()
    done = False
    epoch = 0
    while not done:
        order = rng.permutation(len(x))
        loss_sum, correct, seen = 0.0, 0, 0
        for b in range(steps_per_epoch):
            elapsed = time.perf_counter() - start
            progress = step / total_steps if total_steps else elapsed / seconds
            if progress >= 1.0:
                done = True
                break
            factor = one_cycle(progress, recipe["warmup"])
            for group in optimizer.param_groups:
                group["lr"] = recipe["lr"] * factor
            idx = order[b * BATCH_SIZE:(b + 1) * BATCH_SIZE]
            xb, yb = to_input(augment(idx)), labels[idx]
            if recipe["channels_last"]:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe["bf16"]):
                logits = model(xb)
            loss = loss_fn(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
        else:
            epoch += 1
            if total_steps and step >= total_steps:
                done = True
        if seen:
            print(f"epoch {step / steps_per_epoch:5.2f}: loss {loss_sum / seen:.4f}, "
                  f"train top-1 {100 * correct / seen:5.2f}%, "
                  f"lr x{factor:.3f}, {time.perf_counter() - start:6.0f} s", flush=True)
    return {"steps": step, "epochs": round(step / steps_per_epoch, 2),
            "train_seconds": round(time.perf_counter() - start, 1)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=sorted(nets.MODELS))
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None,
                        help="wall-clock training budget in minutes (default 14)")
    budget.add_argument("--epochs", type=int, default=None,
                        help="train a fixed number of epochs instead of a time budget")
    parser.add_argument("--zoo", default=None,
                        help="model zoo folder (default: $ONNXQUANT_ZOO or ../shared/zoo)")
    parser.add_argument("--threads", type=int, default=NUM_THREADS,
                        help=f"torch CPU threads (default {NUM_THREADS})")
    parser.add_argument("--no-export", action="store_true",
                        help="only train and save the weights; export later with export.py")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    minutes = args.minutes if args.minutes is not None or args.epochs else 14.0
    if (minutes is not None and minutes <= 0) or (args.epochs is not None and args.epochs < 1):
        raise SystemExit("--minutes and --epochs must be positive")
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(SEED)

    x_train, y_train, _, _, _ = data.load_train_val(args.zoo)
    model = nets.build(args.model)
    recipe = RECIPES[args.model]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {n_params} parameters, {len(x_train)} training images, "
          f"budget {f'{minutes} min' if minutes else f'{args.epochs} epochs'}, {recipe}",
          flush=True)
    stats = train(model, recipe, x_train, y_train, rng,
                  minutes * 60 if minutes else None, args.epochs)
    stats.update({
        "model": args.model, "params": n_params, "seed": SEED, "threads": args.threads,
        "batch_size": BATCH_SIZE, "label_smoothing": LABEL_SMOOTHING,
        "augmentation": f"random crop {PAD}-px zero padding, horizontal flip",
        "precision": ("bfloat16 autocast (float32 weights)" if recipe["bf16"] else "float32")
                     + (", channels_last" if recipe["channels_last"] else ""),
        "budget": {"minutes": minutes} if minutes else {"epochs": args.epochs},
        "recipe": recipe, "torch_version": str(torch.__version__),
        "command": shlex.join(["python", "-m", "models.cifar.train", *(argv or sys.argv[1:])]),
    })
    path = checkpoint_path(args.model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "stats": stats}, path)
    print(f"trained {stats['epochs']} epochs in {stats['train_seconds']} s; weights in {path}",
          flush=True)
    if not args.no_export:
        from models.cifar import export
        return export.main(["--model", args.model, *(["--zoo", args.zoo] if args.zoo else [])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
