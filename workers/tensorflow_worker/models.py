"""The shared model specs as Keras 3 functional models (NHWC), with layers named by canonical prefix.

`model.get_layer("stages.0.1.conv1")` is the layer holding canonical "stages.0.1.conv1.weight".
A data-parallel cell builds its BatchNorm layers `synchronized` (see `build`).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from workers.common.specs import (
    BertSpec,
    MLPSpec,
    ModelSpec,
    ResNetSpec,
    canonical_params,
    framework_layout,
    resnet_blocks,
)


def mlp(spec: MLPSpec) -> keras.Model:
    x = inputs = keras.Input((spec.in_features,), name="features")
    sizes = [*spec.hidden, spec.num_classes]
    for i, n in enumerate(sizes):
        x = layers.Dense(n, name=f"layers.{i}")(x)
        if i < len(sizes) - 1:
            x = layers.ReLU()(x)
    return keras.Model(inputs, x, name="mlp")


def _conv(x, filters: int, kernel: int, stride: int, name: str):
    """A convolution padded as PyTorch pads it (kernel // 2 on every side). At stride 1 Keras' `same`
    is exactly that, done inside the convolution; at stride 2 `same` pads only the bottom and right
    (asymmetric), so the padding is an explicit layer there. An explicit ZeroPadding2D before every
    3x3 convolution, stride 1 included, cost a copy of each activation per layer (#23)."""
    p = kernel // 2
    if stride == 1 or not p:
        return layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)(x)
    x = layers.ZeroPadding2D(p)(x)
    return layers.Conv2D(filters, kernel, stride, padding="valid", use_bias=False, name=name)(x)


class SyncBatchNormalization(layers.BatchNormalization):
    """BatchNorm whose training statistics are the global batch's, over all replicas of a
    tf.distribute strategy, computed as one device computes them (tf.nn.moments): the mean first, then
    the mean squared deviation from it; each a SUM all-reduce of the replicas' partial sums over the
    global count. Outside a multi-replica step it is the plain layer.

    Keras' own `synchronized=True` all-reduces sum(x), sum(x^2) and a count (over a tensor of ones the
    size of x) and takes E[x^2] - E[x]^2, which cancels where the mean is large against the spread
    (docs/findings.md). The all-reduce's gradient is an all-reduce (ReplicaContext.all_reduce): the backward pass is the
    global batch's too."""

    def _moments(self, inputs, mask):
        ctx = tf.distribute.get_replica_context()
        if mask is not None or ctx is None or ctx.num_replicas_in_sync == 1:
            return super()._moments(inputs, mask)
        axes = self._reduction_axes
        total = tf.distribute.ReduceOp.SUM
        # every replica holds B/N rows (the backend splits evenly): the global count is N times its own
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), axes)) * ctx.num_replicas_in_sync, inputs.dtype)
        mean = ctx.all_reduce(total, tf.reduce_sum(inputs, axes, keepdims=True)) / count
        # as tf.nn.moments: no gradient through the mean here (the deviations sum to zero)
        deviation = tf.reduce_sum(tf.math.squared_difference(inputs, tf.stop_gradient(mean)), axes)
        return tf.squeeze(mean, axes), ctx.all_reduce(total, deviation) / count


def _bn(x, spec: ResNetSpec, name: str, sync: bool):
    bn = SyncBatchNormalization if sync else layers.BatchNormalization
    return bn(momentum=1.0 - spec.bn_momentum, epsilon=spec.bn_eps, name=name)(x)


def resnet(spec: ResNetSpec, sync_bn: bool = False) -> keras.Model:
    x = inputs = keras.Input((spec.image_size, spec.image_size, spec.in_channels), name="images")  # (B, 32, 32, 3)
    x = layers.ReLU()(_bn(_conv(x, spec.widths[0], 3, 1, "stem.conv"), spec, "stem.bn", sync_bn))
    for name, c_in, c_out, stride in resnet_blocks(spec):
        out = layers.ReLU()(_bn(_conv(x, c_out, 3, stride, f"{name}.conv1"), spec, f"{name}.bn1", sync_bn))
        out = _bn(_conv(out, c_out, 3, 1, f"{name}.conv2"), spec, f"{name}.bn2", sync_bn)
        if stride != 1 or c_in != c_out:
            x = _bn(_conv(x, c_out, 1, stride, f"{name}.shortcut.conv"), spec, f"{name}.shortcut.bn", sync_bn)
        x = layers.ReLU()(layers.Add()([out, x]))
    x = layers.GlobalAveragePooling2D()(x)  # (B, 512)
    return keras.Model(inputs, layers.Dense(spec.num_classes, name="head")(x), name="resnet")


def _split_heads(x, heads: int):
    t, c = x.shape[1], x.shape[2]
    return ops.transpose(ops.reshape(x, (-1, t, heads, c // heads)), (0, 2, 1, 3))  # (B, nh, T, hd)


def bert(spec: BertSpec) -> keras.Model:
    h, ln = spec.hidden, dict(epsilon=spec.ln_eps)
    tokens = keras.Input((spec.seq_len,), dtype="int32", name="tokens")
    x = layers.Embedding(spec.vocab_size, h, name="embeddings.word")(tokens)
    positions = ops.zeros_like(tokens) + ops.arange(spec.seq_len, dtype="int32")  # (B, T), tied to the input
    x = x + layers.Embedding(spec.seq_len, h, name="embeddings.position")(positions)
    x = layers.Dropout(spec.dropout)(layers.LayerNormalization(name="embeddings.norm", **ln)(x))  # (B, T, H)
    for i in range(spec.layers):
        p = f"layers.{i}"
        q, k, v = (
            _split_heads(layers.Dense(h, name=f"{p}.attn.{n}")(x), spec.heads) for n in ("query", "key", "value")
        )
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / math.sqrt(h // spec.heads)  # (B, nh, T, T)
        probs = layers.Dropout(spec.dropout)(layers.Softmax(axis=-1, dtype="float32")(scores))
        y = ops.matmul(ops.cast(probs, v.dtype), v)  # (B, nh, T, hd)
        y = ops.reshape(ops.transpose(y, (0, 2, 1, 3)), (-1, spec.seq_len, h))
        y = layers.Dense(h, name=f"{p}.attn.out")(y)
        x = layers.LayerNormalization(name=f"{p}.attn_norm", **ln)(x + layers.Dropout(spec.dropout)(y))
        f = layers.Dense(spec.ffn, name=f"{p}.ffn.inner")(x)
        f = layers.Activation(lambda t: keras.activations.gelu(t, approximate=spec.gelu != "exact"))(f)
        f = layers.Dense(h, name=f"{p}.ffn.outer")(f)
        x = layers.LayerNormalization(name=f"{p}.ffn_norm", **ln)(x + layers.Dropout(spec.dropout)(f))
    pooled = layers.Activation("tanh")(layers.Dense(h, name="pooler")(x[:, 0]))
    return keras.Model(tokens, layers.Dense(spec.num_classes, name="head")(pooled), name="bert")


def build(spec: ModelSpec, *, sync_bn: bool = False) -> keras.Model:
    """The Keras model for a spec, under the current mixed-precision policy.

    `sync_bn` (a data-parallel cell, built under its MirroredStrategy's scope): BatchNorm takes its
    training statistics over the global batch (`SyncBatchNormalization`), so every replica normalises
    with, and keeps as running statistics, what the one-device step computes (cellspec's "sync").
    A single-device model keeps the plain layer."""
    if isinstance(spec, MLPSpec):
        return mlp(spec)
    if isinstance(spec, ResNetSpec):
        return resnet(spec, sync_bn)
    if isinstance(spec, BertSpec):
        return bert(spec)
    raise TypeError(f"no Keras model for {type(spec).__name__}")


_ATTR = {"kernel": "kernel", "bias": "bias", "embedding": "embeddings", "mean": "moving_mean", "var": "moving_variance"}


def _variable(model: keras.Model, name: str, module: str, role: str):
    layer = model.get_layer(name.rsplit(".", 1)[0])
    if module in ("layernorm", "batchnorm") and role in ("scale", "bias"):
        return layer.gamma if role == "scale" else layer.beta
    return getattr(layer, _ATTR[role])


def load_canonical(model: keras.Model, spec: ModelSpec, weights: dict[str, np.ndarray]) -> keras.Model:
    """Assign canonical tensors to the model's variables (the model returned); every variable must be covered."""
    covered = set()
    for name, param in canonical_params(spec).items():
        _, perm, role = framework_layout(name, param)
        var = _variable(model, name, param.module, role)
        arr = weights[name] if perm is None else np.transpose(weights[name], perm)
        if tuple(arr.shape) != tuple(var.shape):
            raise ValueError(f"{name}: weights {arr.shape} but model {tuple(var.shape)}")
        var.assign(arr.astype(np.float32))
        covered.add(id(var))
    extra = [v.path for v in model.weights if id(v) not in covered]
    if extra:
        raise ValueError(f"Keras variables without a canonical name: {extra[:5]}")
    return model


def export_canonical(model: keras.Model, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The model's tensors as canonical NumPy arrays, under the spec's names."""
    out = {}
    for name, param in canonical_params(spec).items():
        _, perm, role = framework_layout(name, param)
        arr = np.asarray(_variable(model, name, param.module, role).numpy(), dtype=np.float32)
        out[name] = arr if perm is None else np.transpose(arr, np.argsort(perm))
    return out
