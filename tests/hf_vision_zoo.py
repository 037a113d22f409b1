"""Tiny random Hugging Face image classifiers (ViT, ResNet with BatchNorm, ConvNeXt), built offline, trained
for a few seconds on scikit-learn digits (upscaled to 16×16 RGB by their own image processors) and written
with ``save_pretrained`` (safetensors) beside their ``preprocessor_config.json``."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

SIZE = 16
ARCHS = ("vit", "resnet", "convnext")
EPOCHS = {"vit": 10, "resnet": 4, "convnext": 4}  # about 2 s each on one core, 92-100% train accuracy


def build(arch: str, num_labels: int = 10, seed: int = 0):
    """(model, processor): a ``*ForImageClassification`` of a few thousand parameters and its processor."""
    import transformers as tf

    torch.manual_seed(seed)
    labels = {"num_labels": num_labels, "id2label": {i: f"digit {i}" for i in range(num_labels)}}
    if arch == "vit":
        cfg = tf.ViTConfig(
            image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, **labels,
        )  # fmt: skip
        return tf.ViTForImageClassification(cfg), tf.ViTImageProcessor(size={"height": SIZE, "width": SIZE})
    proc = tf.ConvNextImageProcessor(size={"shortest_edge": SIZE})  # ResNet's and ConvNeXt's processor
    if arch == "resnet":
        cfg = tf.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", **labels
        )
        return tf.ResNetForImageClassification(cfg), proc
    if arch == "convnext":
        cfg = tf.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], patch_size=2, **labels)
        return tf.ConvNextForImageClassification(cfg), proc
    raise ValueError(arch)


def digits(n: int | None = None):
    """(x, y, x_test, y_test): digits as [N, 1, 8, 8] floats in [0, 1] (the `digits` loader's split)."""
    from unlearnkit.data.digits import load_digits

    d = load_digits()
    tr, te = d.train.columns, d.test.columns
    return tr["x"][:n], tr["y"][:n], te["x"], te["y"]


def pixel_values(processor, x: torch.Tensor) -> torch.Tensor:
    """[0, 1] grey images as the processor's RGB pixel_values (via 8-bit images, rounded)."""
    rgb = (x * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    return processor(images=rgb, input_data_format="channels_first", return_tensors="pt")["pixel_values"]


def train(model, processor, x, y, epochs: int = 8, lr: float = 3e-3) -> float:
    """Adam on the preprocessed images; returns the training accuracy."""
    pv = pixel_values(processor, x)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            loss = F.cross_entropy(model(pixel_values=pv[idx]).logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(pixel_values=pv).logits.argmax(1) == y).float().mean())


def trained_folder(root: Path, arch: str, num_labels: int = 10) -> tuple[Path, float]:
    """A trained model's folder (weights, config, image processor) and its training accuracy."""
    model, proc = build(arch, num_labels)
    x, y, _, _ = digits()
    acc = train(model, proc, x, y, EPOCHS[arch]) if num_labels == 10 else 0.0
    folder = root / arch
    model.save_pretrained(folder, safe_serialization=True)
    proc.save_pretrained(folder)
    return folder, acc
