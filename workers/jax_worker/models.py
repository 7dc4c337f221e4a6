"""The shared model specs in Flax (linen), NHWC, with module names that map onto canonical names.

A canonical name maps to a Flax path by merging list indices into their parent
("stages.0.1.conv1.weight" -> params/stages_0_1/conv1/kernel): see specs.framework_layout.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from workers.common.specs import (
    BertSpec,
    MLPSpec,
    ModelSpec,
    ResNetSpec,
    canonical_params,
    framework_layout,
    resnet_blocks,
)

Dtype = Any


class MLP(nn.Module):
    spec: MLPSpec
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:  # (B, 784) -> (B, classes)
        sizes = [*self.spec.hidden, self.spec.num_classes]
        for i, n in enumerate(sizes):
            x = nn.Dense(n, dtype=self.dtype, name=f"layers_{i}")(x)
            if i < len(sizes) - 1:
                x = nn.relu(x)
        return x


class ConvBN(nn.Module):
    features: int
    kernel: int
    stride: int
    spec: ResNetSpec
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        p = self.kernel // 2  # explicit symmetric padding, as PyTorch pads (XLA's SAME is asymmetric at stride 2)
        x = nn.Conv(
            self.features,
            (self.kernel,) * 2,
            (self.stride,) * 2,
            padding=((p, p), (p, p)),
            use_bias=False,
            dtype=self.dtype,
            name="conv",
        )(x)
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=1.0 - self.spec.bn_momentum,
            epsilon=self.spec.bn_eps,
            dtype=self.dtype,
            name="bn",
        )(x)


class BasicBlock(nn.Module):
    c_in: int
    c_out: int
    stride: int
    spec: ResNetSpec
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = dict(momentum=1.0 - self.spec.bn_momentum, epsilon=self.spec.bn_eps, dtype=self.dtype)
        conv = dict(use_bias=False, padding=((1, 1), (1, 1)), dtype=self.dtype)
        out = nn.Conv(self.c_out, (3, 3), (self.stride,) * 2, name="conv1", **conv)(x)
        out = nn.relu(nn.BatchNorm(use_running_average=not train, name="bn1", **bn)(out))
        out = nn.Conv(self.c_out, (3, 3), (1, 1), name="conv2", **conv)(out)
        out = nn.BatchNorm(use_running_average=not train, name="bn2", **bn)(out)
        if self.stride != 1 or self.c_in != self.c_out:
            x = ConvBN(self.c_out, 1, self.stride, self.spec, self.dtype, name="shortcut")(x, train)
        return nn.relu(out + x)


class ResNet(nn.Module):
    spec: ResNetSpec
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:  # (B, 32, 32, 3)
        x = nn.relu(ConvBN(self.spec.widths[0], 3, 1, self.spec, self.dtype, name="stem")(x, train))
        for name, c_in, c_out, stride in resnet_blocks(self.spec):
            x = BasicBlock(c_in, c_out, stride, self.spec, self.dtype, name=name.replace(".", "_"))(x, train)
        x = x.mean(axis=(1, 2))  # (B, 512)
        return nn.Dense(self.spec.num_classes, dtype=self.dtype, name="head")(x)


class Attention(nn.Module):
    spec: BertSpec
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        B, T, C = x.shape
        nh = self.spec.heads
        q, k, v = (
            nn.Dense(C, dtype=self.dtype, name=n)(x).reshape(B, T, nh, C // nh) for n in ("query", "key", "value")
        )
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(C // nh)  # (B, nh, T, T)
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
        probs = nn.Dropout(self.spec.dropout, deterministic=not train)(probs)
        y = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, T, C)
        return nn.Dense(C, dtype=self.dtype, name="out")(y)


class EncoderLayer(nn.Module):
    """Post-LN: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    spec: BertSpec
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s = self.spec
        ln = dict(epsilon=s.ln_eps, use_fast_variance=False, dtype=self.dtype)
        drop = nn.Dropout(s.dropout, deterministic=not train)
        x = nn.LayerNorm(name="attn_norm", **ln)(x + drop(Attention(s, self.dtype, name="attn")(x, train)))
        h = FeedForward(s, self.dtype, name="ffn")(x)
        return nn.LayerNorm(name="ffn_norm", **ln)(x + drop(h))


class FeedForward(nn.Module):
    spec: BertSpec
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.Dense(self.spec.ffn, dtype=self.dtype, name="inner")(x)
        h = nn.gelu(h, approximate=self.spec.gelu != "exact")
        return nn.Dense(self.spec.hidden, dtype=self.dtype, name="outer")(h)


class Embeddings(nn.Module):
    spec: BertSpec
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool) -> jax.Array:  # (B, T) int
        s = self.spec
        x = nn.Embed(s.vocab_size, s.hidden, dtype=self.dtype, name="word")(tokens)
        x = x + nn.Embed(s.seq_len, s.hidden, dtype=self.dtype, name="position")(jnp.arange(tokens.shape[1]))
        x = nn.LayerNorm(epsilon=s.ln_eps, use_fast_variance=False, dtype=self.dtype, name="norm")(x)
        return nn.Dropout(s.dropout, deterministic=not train)(x)  # (B, T, H)


class Bert(nn.Module):
    spec: BertSpec
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        x = Embeddings(self.spec, self.dtype, name="embeddings")(tokens, train)
        for i in range(self.spec.layers):
            x = EncoderLayer(self.spec, self.dtype, name=f"layers_{i}")(x, train)
        pooled = jnp.tanh(nn.Dense(self.spec.hidden, dtype=self.dtype, name="pooler")(x[:, 0]))
        return nn.Dense(self.spec.num_classes, dtype=self.dtype, name="head")(pooled)  # (B, classes)


def build(spec: ModelSpec, *, dtype: Dtype = jnp.float32) -> nn.Module:
    """The Flax module for a spec (parameters always fp32; `dtype` is the compute type)."""
    if isinstance(spec, MLPSpec):
        return MLP(spec, dtype)
    if isinstance(spec, ResNetSpec):
        return ResNet(spec, dtype)
    if isinstance(spec, BertSpec):
        return Bert(spec, dtype)
    raise TypeError(f"no Flax model for {type(spec).__name__}")


_COLLECTION = {"mean": "batch_stats", "var": "batch_stats"}


def _flat(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def load_canonical(model: dict[str, Any], spec: ModelSpec, weights: dict[str, np.ndarray]) -> dict[str, Any]:
    """Flax variables (params, batch_stats) holding the canonical tensors, returned: a Flax model is its
    variables, so `model` (variables, or only their shapes) is not changed; names and shapes must match."""
    target = _flat(jax.tree_util.tree_map(lambda a: a, model))
    out: dict[str, Any] = {}
    seen = set()
    for name, param in canonical_params(spec).items():
        path, perm, role = framework_layout(name, param)
        key = (_COLLECTION.get(role, "params"), *path, role)
        if key not in target:
            raise ValueError(f"{name}: no Flax variable {'/'.join(key)}")
        arr = weights[name] if perm is None else np.transpose(weights[name], perm)
        if tuple(arr.shape) != tuple(target[key].shape):
            raise ValueError(f"{name}: weights {arr.shape} but model {tuple(target[key].shape)}")
        node = out
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = jnp.asarray(arr, dtype=jnp.float32)
        seen.add(key)
    extra = set(target) - seen
    if extra:
        raise ValueError(f"Flax variables without a canonical name: {sorted('/'.join(k) for k in extra)[:5]}")
    return out


def export_canonical(model: dict[str, Any], spec: ModelSpec) -> dict[str, np.ndarray]:
    """The model's tensors as canonical NumPy arrays, under the spec's names."""
    flat = _flat(model)
    out = {}
    for name, param in canonical_params(spec).items():
        path, perm, role = framework_layout(name, param)
        arr = np.asarray(flat[(_COLLECTION.get(role, "params"), *path, role)], dtype=np.float32)
        out[name] = arr if perm is None else np.transpose(arr, np.argsort(perm))
    return out
