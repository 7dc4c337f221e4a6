"""Flax (linen) references, as the Flax examples write them, and the spec's optimizers in optax.

The ResNet is the Flax ImageNet example's (`ResNetBlock` with `conv`/`norm` partials, `conv_proj` and
`norm_proj` shortcuts, `ResNet18 = partial(ResNet, stage_sizes=[2, 2, 2, 2])`) with the CIFAR stem
(3x3 stride-1 convolution, no max-pool). Flax's default `SAME` padding where it is PyTorch's
arithmetic (stride 1, and the 1x1 stride-2 projection, which pads nothing); explicit (1, 1) padding on
the 3x3 stride-2 convolutions, where XLA's SAME pads only the bottom and right. BERT: post-LN blocks
around `nn.MultiHeadDotProductAttention` (per-element attention dropout: `broadcast_dropout=False`),
learned positions as one `pos_embedding` parameter added to the token embeddings (the Flax WMT/LM1B
examples' `AddPositionEmbs`), and Flax's LayerNorm as it comes (`use_fast_variance`: the variance
as E[x^2] - E[x]^2, one pass).

For `bench.parity_cost`: `build(spec, same_padding=True)` gives Flax's SAME on the stride-2
convolutions too (other arithmetic), `build(spec, fast_variance=False)` the two-pass LayerNorm variance
the JAX worker computes as PyTorch does (the same function, another rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from workers.common.specs import BertSpec, MLPSpec, ModelSpec, OptimizerSpec, ResNetSpec

ModuleDef = Any

# --- models ------------------------------------------------------------------------------------


class MLP(nn.Module):
    features: tuple[int, ...]  # hidden sizes, then the classes

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:  # (B, 784)
        for n in self.features[:-1]:
            x = nn.relu(nn.Dense(n)(x))
        return nn.Dense(self.features[-1])(x)  # (B, classes)


class ResNetBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable[[jax.Array], jax.Array]
    strides: tuple[int, int] = (1, 1)
    same_padding: bool = False  # SAME at stride 2 as well: not PyTorch's arithmetic

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        residual = x
        # SAME at stride 2 pads (0, 1): PyTorch's (1, 1) is written out there
        padding = "SAME" if self.strides == (1, 1) or self.same_padding else ((1, 1), (1, 1))
        y = self.conv(self.filters, (3, 3), self.strides, padding=padding)(x)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm()(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    stage_sizes: tuple[int, ...]
    widths: tuple[int, ...]
    num_classes: int
    bn_momentum: float  # Flax's: the weight of the old running value
    bn_eps: float
    act: Callable[[jax.Array], jax.Array] = nn.relu
    same_padding: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:  # (B, 32, 32, 3)
        conv = partial(nn.Conv, use_bias=False)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_eps)
        x = self.act(norm(name="bn_init")(conv(self.widths[0], (3, 3), name="conv_init")(x)))  # CIFAR stem
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = ResNetBlock(
                    self.widths[i], conv=conv, norm=norm, act=self.act, strides=strides, same_padding=self.same_padding
                )(x)
        x = jnp.mean(x, axis=(1, 2))  # (B, 512)
        return nn.Dense(self.num_classes)(x)


class EncoderBlock(nn.Module):
    """Post-LN: x = LN(x + dropout(attention(x))); x = LN(x + dropout(FFN(x)))."""

    spec: BertSpec
    fast_variance: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:  # (B, T, H)
        s = self.spec
        ln = partial(nn.LayerNorm, epsilon=s.ln_eps, use_fast_variance=self.fast_variance)
        y = nn.MultiHeadDotProductAttention(
            num_heads=s.heads, dropout_rate=s.dropout, broadcast_dropout=False, deterministic=not train
        )(x)
        x = ln()(x + nn.Dropout(s.dropout, deterministic=not train)(y))
        y = nn.gelu(nn.Dense(s.ffn)(x), approximate=s.gelu != "exact")
        y = nn.Dense(s.hidden)(y)
        return ln()(x + nn.Dropout(s.dropout, deterministic=not train)(y))


class Bert(nn.Module):
    spec: BertSpec
    fast_variance: bool = True

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:  # (B, T) int
        s = self.spec
        x = nn.Embed(s.vocab_size, s.hidden, name="word_embeddings")(tokens)
        pe = self.param("pos_embedding", nn.initializers.normal(s.init_std), (1, s.seq_len, s.hidden))
        x = x + pe[:, : tokens.shape[1]]
        x = nn.LayerNorm(epsilon=s.ln_eps, use_fast_variance=self.fast_variance, name="embeddings_norm")(x)
        x = nn.Dropout(s.dropout, deterministic=not train)(x)
        for _ in range(s.layers):
            x = EncoderBlock(s, self.fast_variance)(x, train)
        pooled = jnp.tanh(nn.Dense(s.hidden, name="pooler")(x[:, 0]))  # the first token
        return nn.Dense(s.num_classes, name="classifier")(pooled)  # (B, classes)


def build(spec: ModelSpec, same_padding: bool = False, fast_variance: bool = True) -> nn.Module:
    """The reference for `spec`; `same_padding`: SAME on the stride-2 3x3 convolutions too;
    `fast_variance=False`: the LayerNorms' variance in two passes (the JAX worker's, PyTorch's)."""
    if isinstance(spec, MLPSpec):
        return MLP((*spec.hidden, spec.num_classes))
    if isinstance(spec, ResNetSpec):
        return ResNet(
            spec.stage_sizes,
            spec.widths,
            spec.num_classes,
            1.0 - spec.bn_momentum,
            spec.bn_eps,
            same_padding=same_padding,
        )
    if isinstance(spec, BertSpec):
        return Bert(spec, fast_variance)
    raise TypeError(f"no Flax reference for {type(spec).__name__}")


# --- canonical weights -> this model's variables -------------------------------------------------


def _kernel(w: np.ndarray) -> np.ndarray:
    """(out, in) -> Dense's (in, out); (O, I, kh, kw) -> Conv's (kh, kw, I, O)."""
    return w.T if w.ndim == 2 else np.transpose(w, (2, 3, 1, 0))


def _place(module: tuple[str, ...], leaf: str, w: np.ndarray, norm: str | None) -> tuple[tuple[str, ...], Any]:
    """(collection, *module, variable) and the value for one canonical tensor of a Dense, Conv or norm."""
    if norm is not None and leaf in ("running_mean", "running_var"):
        return ("batch_stats", *module, {"running_mean": "mean", "running_var": "var"}[leaf]), w
    if norm is not None:
        return ("params", *module, {"weight": "scale", "bias": "bias"}[leaf]), w
    return ("params", *module, "kernel" if leaf == "weight" else "bias"), _kernel(w) if leaf == "weight" else w


def _resnet_module(spec: ResNetSpec, module: str) -> tuple[tuple[str, ...], str | None]:
    parts = module.split(".")
    if parts[0] == "stem":
        return ("conv_init",) if parts[1] == "conv" else ("bn_init",), None if parts[1] == "conv" else "bn"
    if parts[0] == "head":
        return ("Dense_0",), None
    s, b, rest = int(parts[1]), int(parts[2]), ".".join(parts[3:])
    block = f"ResNetBlock_{sum(spec.stage_sizes[:s]) + b}"  # linen's automatic names, in call order
    inner = {
        "conv1": "Conv_0",
        "bn1": "BatchNorm_0",
        "conv2": "Conv_1",
        "bn2": "BatchNorm_1",
        "shortcut.conv": "conv_proj",
        "shortcut.bn": "norm_proj",
    }[rest]
    return (block, inner), "bn" if "bn" in rest else None


def _bert_place(spec: BertSpec, module: str, leaf: str, w: np.ndarray) -> tuple[tuple[str, ...], Any]:
    h, heads = spec.hidden, spec.heads
    if module == "embeddings.word":
        return ("params", "word_embeddings", "embedding"), w
    if module == "embeddings.position":
        return ("params", "pos_embedding"), w[None]  # (1, T, H)
    if module in ("embeddings.norm", "pooler", "head"):
        name = {"embeddings.norm": "embeddings_norm", "pooler": "pooler", "head": "classifier"}[module]
        return _place((name,), leaf, w, "ln" if module == "embeddings.norm" else None)
    _, i, *rest = module.split(".")
    block = f"EncoderBlock_{i}"
    rest = ".".join(rest)
    attention, role = ("params", block, "MultiHeadDotProductAttention_0"), "kernel" if leaf == "weight" else "bias"
    if rest in ("attn.query", "attn.key", "attn.value"):  # DenseGeneral: kernel (H, heads, hd), bias (heads, hd)
        value = w.T.reshape(h, heads, h // heads) if leaf == "weight" else w.reshape(heads, h // heads)
        return (*attention, rest.split(".")[1], role), value
    if rest == "attn.out":  # kernel (heads, hd, H)
        return (*attention, "out", role), w.T.reshape(heads, h // heads, h) if leaf == "weight" else w
    name = {"attn_norm": "LayerNorm_0", "ffn.inner": "Dense_0", "ffn.outer": "Dense_1", "ffn_norm": "LayerNorm_1"}[rest]
    return _place((block, name), leaf, w, "ln" if "norm" in rest else None)


def variables_from_canonical(spec: ModelSpec, weights: dict[str, np.ndarray]) -> dict[str, Any]:
    """The model's variables ({"params": ..., "batch_stats": ...}) holding the canonical tensors."""
    out: dict[str, Any] = {}
    for name, w in weights.items():
        module, leaf = name.rsplit(".", 1)
        if isinstance(spec, MLPSpec):
            key, value = _place((f"Dense_{module.split('.')[1]}",), leaf, w, None)
        elif isinstance(spec, ResNetSpec):
            path, norm = _resnet_module(spec, module)
            key, value = _place(path, leaf, w, norm)
        else:
            key, value = _bert_place(spec, module, leaf, w)
        node = out
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = jnp.asarray(np.ascontiguousarray(value), jnp.float32)
    return out


def load_canonical(model: nn.Module, spec: ModelSpec, weights: dict[str, np.ndarray], x: Any) -> dict[str, Any]:
    """The variables from the canonical weights, checked against the model's own (the shapes `init`
    would make for input `x`): every variable covered, every shape equal."""
    variables = variables_from_canonical(spec, weights)
    like = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(dict(like))}
    have = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(variables)}
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise ValueError(f"reference and canonical differ at {diff[:5]}")
    return variables


# --- optimizer and schedule ---------------------------------------------------------------------


def schedule(opt: OptimizerSpec) -> optax.ScalarOrSchedule:
    """The spec's learning rate: constant, or linear warm-up from lr/W over W updates then linear decay
    to 0 at the last one, joined from two of optax's linear schedules."""
    if opt.schedule == "constant" or opt.total_steps <= 0:
        return opt.lr
    w, t = max(1, round(opt.warmup * opt.total_steps)), opt.total_steps
    return optax.join_schedules(
        [optax.linear_schedule(opt.lr / w, opt.lr, w - 1), optax.linear_schedule(opt.lr, 0.0, t - w)], [w]
    )


def optimizer(opt: OptimizerSpec) -> optax.GradientTransformation:
    """optax's SGD with the decay added to the gradient first (PyTorch's coupled weight decay), or AdamW."""
    if opt.name == "sgd":
        return optax.chain(optax.add_decayed_weights(opt.weight_decay), optax.sgd(schedule(opt), opt.momentum or None))
    if opt.name == "adamw":
        return optax.adamw(schedule(opt), b1=opt.beta1, b2=opt.beta2, eps=opt.eps, weight_decay=opt.weight_decay)
    raise ValueError(f"no reference optimizer {opt.name!r}")
