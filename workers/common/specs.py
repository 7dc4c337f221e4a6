"""Framework-free model specs: the single source of each architecture's sizes and training recipe.

Every worker builds its models from these dataclasses and loads the canonical initial weights
made by `workers.common.weights`, so the same cell trains the same network in every framework.
Canonical parameter names and layouts follow PyTorch (Linear weight is (out, in), Conv weight is
(out, in, kh, kw)); other frameworks transpose on import and export.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any


@dataclass(frozen=True)
class OptimizerSpec:
    """Optimizer and hyper-parameters, identical in every framework."""

    name: str  # "sgd" (PyTorch semantics: coupled L2 weight decay) | "adamw" (decoupled)
    lr: float
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8  # added to sqrt(v_hat), as PyTorch and optax do
    weight_decay: float = 0.0
    # "constant", or "linear": linear warm-up from lr/W to lr over the first W = round(warmup x total)
    # updates, then linear decay towards 0 (BERT's recipe). The harness sets total_steps.
    schedule: str = "constant"
    warmup: float = 0.0
    total_steps: int = 0

    def warmup_steps(self) -> int:
        return max(1, round(self.warmup * self.total_steps))

    def lr_factor(self, step: int) -> float:
        """The learning-rate multiplier of update number `step` (0 for the first update)."""
        if self.schedule == "constant" or self.total_steps <= 0:
            return 1.0
        w, t = self.warmup_steps(), self.total_steps
        if step < w:
            return (step + 1) / w
        return max(0.0, (t - step) / max(1, t - w))


@dataclass(frozen=True)
class MLPSpec:
    """784-512-512-10 with ReLU; Linear init U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""

    kind: str = "mlp"
    family: str = "tabular"
    in_features: int = 784
    hidden: tuple[int, ...] = (512, 512)
    num_classes: int = 10
    optimizer: OptimizerSpec = OptimizerSpec("adamw", lr=1e-3, weight_decay=0.01)


@dataclass(frozen=True)
class ResNetSpec:
    """CIFAR ResNet: 3x3 stem conv, no max-pool, basic blocks, BN, global average pool, linear head.

    Conv weights: Kaiming normal (fan_out, ReLU gain), no conv bias; BN gamma 1, beta 0;
    head: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """

    kind: str = "resnet"
    family: str = "image"
    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    in_channels: int = 3
    image_size: int = 32
    num_classes: int = 10
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1  # PyTorch convention: weight of the new batch statistic (Keras/Flax: 0.9)
    # lr 0.05 without warm-up blew the loss up early at batch 32 (2.4 -> 5.4), chaotically in every
    # framework. At a constant 0.01 the weights still move fast in the last epoch, the BatchNorm running
    # statistics lag them and eval-mode accuracy swung between frameworks (resnet34: 94/70/35% with
    # equal training losses); decaying the lr to 0 lets them settle.
    optimizer: OptimizerSpec = OptimizerSpec(
        "sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="linear", warmup=0.1
    )


@dataclass(frozen=True)
class BertSpec:
    """BERT-Mini-sized post-LN encoder with learned positions, embedding LayerNorm, pooler and head.

    Linear and embedding weights N(0, 0.02), biases 0, LayerNorm gamma 1, beta 0. Token 0 of every
    sequence is the classification token the pooler reads. No token-type embeddings, no padding.
    """

    kind: str = "bert"
    family: str = "tokens"
    vocab_size: int = 8192
    seq_len: int = 128
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    ffn: int = 1024
    num_classes: int = 2
    ln_eps: float = 1e-12
    gelu: str = "exact"  # erf form, not the tanh approximation
    dropout: float = 0.1  # on embeddings, attention probabilities and residual branches
    init_std: float = 0.02
    # peak 5e-4 let a post-LN run spike late and lose its validation accuracy in one framework of three
    optimizer: OptimizerSpec = OptimizerSpec("adamw", lr=3e-4, weight_decay=0.01, schedule="linear", warmup=0.1)


ResNet18 = partial(ResNetSpec, stage_sizes=(2, 2, 2, 2))
ResNet34 = partial(ResNetSpec, stage_sizes=(3, 4, 6, 3))

MODELS: dict[str, Any] = {
    "mlp": MLPSpec,
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "bert": BertSpec,
}

ModelSpec = MLPSpec | ResNetSpec | BertSpec


def with_total_steps(spec: ModelSpec, total_steps: int) -> ModelSpec:
    """The spec with its optimizer told how many updates training makes (for the lr schedule)."""
    return dataclasses.replace(spec, optimizer=dataclasses.replace(spec.optimizer, total_steps=total_steps))


def override_keys(model: str) -> list[str]:
    """Fields of a model's spec that a config may override."""
    fields = dataclasses.fields(MODELS[model]())
    return [f.name for f in fields if f.name not in ("kind", "family")]


def get_spec(model: str, overrides: dict[str, Any] | None = None) -> ModelSpec:
    """The spec of `model`, with config overrides applied (lists become tuples, dicts optimizer specs)."""
    if model not in MODELS:
        raise KeyError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    kwargs: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key not in override_keys(model):
            raise KeyError(f"{model} has no setting {key!r}; allowed: {', '.join(override_keys(model))}")
        if key == "optimizer":
            value = dataclasses.replace(MODELS[model]().optimizer, **value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return MODELS[model](**kwargs)


def spec_dict(spec: ModelSpec) -> dict[str, Any]:
    """A JSON-friendly dict of a spec (for events and results)."""
    return dataclasses.asdict(spec)


# --- canonical parameters --------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One canonical tensor: its shape, how it is initialised, whether it is trained, and the kind of
    layer it belongs to (which tells each framework where the tensor lives and how to transpose it)."""

    shape: tuple[int, ...]
    init: str  # "kaiming_normal_fan_out" | "uniform_fan_in" | "normal" | "zeros" | "ones"
    module: str  # "linear" | "conv" | "embedding" | "layernorm" | "batchnorm"
    fan_in: int = 0
    std: float = 0.0
    trainable: bool = True


def _linear(params: dict[str, Param], name: str, n_in: int, n_out: int, init: str, std: float = 0.0) -> None:
    w_init, b_init = (init, init) if init == "uniform_fan_in" else (init, "zeros")
    params[f"{name}.weight"] = Param((n_out, n_in), w_init, "linear", fan_in=n_in, std=std)
    params[f"{name}.bias"] = Param((n_out,), b_init, "linear", fan_in=n_in)


def _norm(params: dict[str, Param], name: str, n: int, running: bool) -> None:
    kind = "batchnorm" if running else "layernorm"
    params[f"{name}.weight"] = Param((n,), "ones", kind)
    params[f"{name}.bias"] = Param((n,), "zeros", kind)
    if running:  # BatchNorm running statistics: state, not trained
        params[f"{name}.running_mean"] = Param((n,), "zeros", kind, trainable=False)
        params[f"{name}.running_var"] = Param((n,), "ones", kind, trainable=False)


def _conv(params: dict[str, Param], name: str, c_in: int, c_out: int, k: int) -> None:
    params[f"{name}.weight"] = Param(
        (c_out, c_in, k, k), "kaiming_normal_fan_out", "conv", std=math.sqrt(2.0 / (c_out * k * k))
    )


def resnet_blocks(spec: ResNetSpec) -> list[tuple[str, int, int, int]]:
    """(name, in_channels, out_channels, stride) of every basic block, in order."""
    blocks, c_in = [], spec.widths[0]
    for s, (n, width) in enumerate(zip(spec.stage_sizes, spec.widths, strict=True)):
        for b in range(n):
            stride = 2 if (s > 0 and b == 0) else 1
            blocks.append((f"stages.{s}.{b}", c_in, width, stride))
            c_in = width
    return blocks


def canonical_params(spec: ModelSpec) -> dict[str, Param]:
    """Every canonical tensor of a model, in a stable order."""
    p: dict[str, Param] = {}
    if isinstance(spec, MLPSpec):
        sizes = [spec.in_features, *spec.hidden, spec.num_classes]
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            _linear(p, f"layers.{i}", a, b, "uniform_fan_in")
    elif isinstance(spec, ResNetSpec):
        _conv(p, "stem.conv", spec.in_channels, spec.widths[0], 3)
        _norm(p, "stem.bn", spec.widths[0], running=True)
        for name, c_in, c_out, stride in resnet_blocks(spec):
            _conv(p, f"{name}.conv1", c_in, c_out, 3)
            _norm(p, f"{name}.bn1", c_out, running=True)
            _conv(p, f"{name}.conv2", c_out, c_out, 3)
            _norm(p, f"{name}.bn2", c_out, running=True)
            if stride != 1 or c_in != c_out:
                _conv(p, f"{name}.shortcut.conv", c_in, c_out, 1)
                _norm(p, f"{name}.shortcut.bn", c_out, running=True)
        _linear(p, "head", spec.widths[-1], spec.num_classes, "uniform_fan_in")
    elif isinstance(spec, BertSpec):
        h, std = spec.hidden, spec.init_std
        assert h % spec.heads == 0, "hidden size must divide into heads"
        p["embeddings.word.weight"] = Param((spec.vocab_size, h), "normal", "embedding", std=std)
        p["embeddings.position.weight"] = Param((spec.seq_len, h), "normal", "embedding", std=std)
        _norm(p, "embeddings.norm", h, running=False)
        for i in range(spec.layers):
            for proj in ("query", "key", "value", "out"):
                _linear(p, f"layers.{i}.attn.{proj}", h, h, "normal", std)
            _norm(p, f"layers.{i}.attn_norm", h, running=False)
            _linear(p, f"layers.{i}.ffn.inner", h, spec.ffn, "normal", std)
            _linear(p, f"layers.{i}.ffn.outer", spec.ffn, h, "normal", std)
            _norm(p, f"layers.{i}.ffn_norm", h, running=False)
        _linear(p, "pooler", h, h, "normal", std)
        _linear(p, "head", h, spec.num_classes, "normal", std)
    else:
        raise TypeError(f"no canonical parameters for {type(spec).__name__}")
    return p


def module_path(module: str) -> tuple[str, ...]:
    """A canonical module name as a path of names without list indices ("stages.0.1.conv1" ->
    ("stages_0_1", "conv1")): how Flax names submodules, and how TensorFlow/Keras layers are found."""
    path: list[str] = []
    for part in module.split("."):
        if part.isdigit():
            path[-1] += f"_{part}"
        else:
            path.append(part)
    return tuple(path)


def framework_layout(name: str, param: Param) -> tuple[tuple[str, ...], tuple[int, ...] | None, str]:
    """Where a canonical tensor lives in TensorFlow/Keras and Flax, and how to transpose it there.

    Returns (module path, axes permutation from canonical or None, leaf role), where the module
    path merges list indices into their parent ("stages.0.1.conv1" -> ("stages_0_1", "conv1")) and
    the role is one of kernel, bias, scale, embedding, mean, var. Both frameworks keep kernels as
    (in, out) and (kh, kw, in, out).
    """
    module, leaf = name.rsplit(".", 1)
    path = module_path(module)
    role = {"bias": "bias", "running_mean": "mean", "running_var": "var"}.get(leaf)
    perm: tuple[int, ...] | None = None
    if role is None:  # a weight
        role = {"linear": "kernel", "conv": "kernel", "embedding": "embedding"}.get(param.module, "scale")
        perm = {"linear": (1, 0), "conv": (2, 3, 1, 0)}.get(param.module)
    return path, perm, role


def num_parameters(spec: ModelSpec) -> int:
    """Trainable parameter count: what every framework must report for this spec."""
    return sum(math.prod(q.shape) for q in canonical_params(spec).values() if q.trainable)


@dataclass(frozen=True)
class InputSpec:
    """Shape and dtype of one input sample (without the batch axis)."""

    shape: tuple[int, ...]
    dtype: str
    num_classes: int
    extra: dict[str, Any] = field(default_factory=dict)


def input_spec(spec: ModelSpec) -> InputSpec:
    """What one sample of this model's data looks like."""
    if isinstance(spec, MLPSpec):
        return InputSpec((spec.in_features,), "float32", spec.num_classes)
    if isinstance(spec, ResNetSpec):
        return InputSpec((spec.in_channels, spec.image_size, spec.image_size), "float32", spec.num_classes)
    return InputSpec((spec.seq_len,), "int32", spec.num_classes, {"vocab_size": spec.vocab_size})


# --- FLOPs ------------------------------------------------------------------------------------
# Counted as the FLOPs of matrix multiplications and convolutions, a multiply-add being 2 FLOPs;
# normalisations, activations, pooling and the optimizer are left out (they are a few percent).
# Training costs 3x the forward pass (the backward pass computes gradients for activations and for
# weights, each as costly as the forward), the convention of Kaplan et al. and nanoGPT's estimate_mfu.


def forward_flops(spec: ModelSpec) -> int:
    """FLOPs of one sample's forward pass."""
    if isinstance(spec, MLPSpec):
        sizes = [spec.in_features, *spec.hidden, spec.num_classes]
        return sum(2 * a * b for a, b in itertools.pairwise(sizes))
    if isinstance(spec, ResNetSpec):
        hw = spec.image_size
        flops = 2 * 9 * spec.in_channels * spec.widths[0] * hw * hw  # stem
        for _, c_in, c_out, stride in resnet_blocks(spec):
            hw_out = hw // stride
            flops += 2 * 9 * c_in * c_out * hw_out * hw_out + 2 * 9 * c_out * c_out * hw_out * hw_out
            if stride != 1 or c_in != c_out:
                flops += 2 * c_in * c_out * hw_out * hw_out  # 1x1 projection shortcut
            hw = hw_out
        return flops + 2 * spec.widths[-1] * spec.num_classes
    if isinstance(spec, BertSpec):
        t, h, f = spec.seq_len, spec.hidden, spec.ffn
        per_layer = 4 * 2 * t * h * h + 2 * 2 * t * t * h + 2 * 2 * t * h * f  # projections, QK^T and PV, FFN
        return spec.layers * per_layer + 2 * h * h + 2 * h * spec.num_classes  # + pooler and head
    raise TypeError(f"no FLOP count for {type(spec).__name__}")


def train_flops(spec: ModelSpec) -> int:
    """FLOPs of one sample's training step (forward and backward)."""
    return 3 * forward_flops(spec)
