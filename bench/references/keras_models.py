"""Keras references: `keras.Sequential`, a `keras.applications`-style functional ResNet, the keras.io
Transformer block around `layers.MultiHeadAttention`, and the spec's optimizers as Keras optimizers.

Padding: Keras' `same` where it is PyTorch's arithmetic (every stride-1 convolution, and the 1x1
stride-2 shortcut, which pads nothing either way); an explicit `ZeroPadding2D(1)` before the 3x3
stride-2 convolutions, where `same` would pad only the bottom and right (as `keras.applications`
pads its stride-2 stems).

Optimizers: Keras' own SGD folds the learning rate into its velocity (v = mu v - lr g; w += v),
which is not PyTorch's momentum (b = mu b + g; w -= lr b) once the rate changes from step to step,
as the linear schedule does; and its AdamW adds epsilon to sqrt(v) before the bias correction, not
after. Both are written out here as Keras optimizers with the spec's arithmetic; the cost is the
same few element-wise ops per variable.

`build(spec, same_padding=True)` and `optimizer(opt, keras_own=True)` give Keras' native forms instead
(`same` at stride 2; Keras' own SGD and AdamW): other arithmetic, for `bench.parity_cost` to time what
PyTorch's costs here.
"""

from __future__ import annotations

import re
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from workers.common.specs import BertSpec, MLPSpec, ModelSpec, OptimizerSpec, ResNetSpec

# --- models ------------------------------------------------------------------------------------


def mlp(spec: MLPSpec) -> keras.Model:
    """Dense layers `dense_0`, `dense_1`, ... with the ReLU fused in (`activation="relu"`)."""
    sizes = [*spec.hidden, spec.num_classes]
    return keras.Sequential(
        [keras.Input((spec.in_features,))]
        + [
            layers.Dense(n, activation="relu" if i < len(sizes) - 1 else None, name=f"dense_{i}")
            for i, n in enumerate(sizes)
        ],
        name="mlp",
    )


def _conv(x: Any, filters: int, kernel: int, stride: int, name: str, same_padding: bool = False) -> Any:
    if stride > 1 and kernel > 1 and not same_padding:  # `same` is asymmetric here: pad as PyTorch does, both sides
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        return layers.Conv2D(filters, kernel, stride, padding="valid", use_bias=False, name=f"{name}_conv")(x)
    return layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)


def _bn(x: Any, spec: ResNetSpec, name: str) -> Any:
    # Keras' momentum is the weight of the old running value: PyTorch's 0.1 is Keras' 0.9
    return layers.BatchNormalization(axis=3, epsilon=spec.bn_eps, momentum=1.0 - spec.bn_momentum, name=f"{name}_bn")(x)


def _block(x: Any, filters: int, stride: int, spec: ResNetSpec, name: str, same_padding: bool) -> Any:
    """A basic block named as keras.applications names its blocks: `{name}_1_conv`, `_1_bn`, `_2_*`,
    and the projection shortcut `_0_conv`, `_0_bn`."""
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _bn(_conv(x, filters, 1, stride, f"{name}_0"), spec, f"{name}_0")
    else:
        shortcut = x
    x = layers.Activation("relu", name=f"{name}_1_relu")(
        _bn(_conv(x, filters, 3, stride, f"{name}_1", same_padding), spec, f"{name}_1")
    )
    x = _bn(_conv(x, filters, 3, 1, f"{name}_2"), spec, f"{name}_2")
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, x]))


def resnet(spec: ResNetSpec, same_padding: bool = False) -> keras.Model:
    inputs = keras.Input((spec.image_size, spec.image_size, spec.in_channels))  # (B, 32, 32, 3)
    x = layers.Activation("relu", name="conv1_relu")(_bn(_conv(inputs, spec.widths[0], 3, 1, "conv1"), spec, "conv1"))
    for s, (blocks, filters) in enumerate(zip(spec.stage_sizes, spec.widths, strict=True)):
        for b in range(blocks):
            x = _block(x, filters, 2 if (s > 0 and b == 0) else 1, spec, f"conv{s + 2}_block{b + 1}", same_padding)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)  # (B, 512)
    return keras.Model(inputs, layers.Dense(spec.num_classes, name="predictions")(x), name="resnet")


class TokenAndPositionEmbedding(layers.Layer):
    """Token and learned position embeddings, summed (the keras.io Transformer example's layer)."""

    def __init__(self, maxlen: int, vocab_size: int, embed_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.token_emb = layers.Embedding(vocab_size, embed_dim)
        self.pos_emb = layers.Embedding(maxlen, embed_dim)

    def call(self, x: Any) -> Any:  # (B, T) int -> (B, T, H)
        positions = ops.arange(0, ops.shape(x)[-1], 1)
        return self.token_emb(x) + self.pos_emb(positions)


class TransformerBlock(layers.Layer):
    """Post-LN encoder block (the keras.io example's): attention, dropout, add & norm; FFN, dropout, add & norm."""

    def __init__(self, spec: BertSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        h = spec.hidden
        self.att = layers.MultiHeadAttention(num_heads=spec.heads, key_dim=h // spec.heads, dropout=spec.dropout)
        gelu = "gelu" if spec.gelu == "exact" else lambda t: keras.activations.gelu(t, approximate=True)
        self.ffn = keras.Sequential([layers.Dense(spec.ffn, activation=gelu), layers.Dense(h)])
        self.layernorm1 = layers.LayerNormalization(epsilon=spec.ln_eps)
        self.layernorm2 = layers.LayerNormalization(epsilon=spec.ln_eps)
        self.dropout1 = layers.Dropout(spec.dropout)
        self.dropout2 = layers.Dropout(spec.dropout)

    def call(self, inputs: Any, training: bool = False) -> Any:
        attn_output = self.dropout1(self.att(inputs, inputs, training=training), training=training)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.dropout2(self.ffn(out1), training=training)
        return self.layernorm2(out1 + ffn_output)


def bert(spec: BertSpec) -> keras.Model:
    tokens = keras.Input((spec.seq_len,), dtype="int32")
    x = TokenAndPositionEmbedding(spec.seq_len, spec.vocab_size, spec.hidden, name="embeddings")(tokens)
    x = layers.LayerNormalization(epsilon=spec.ln_eps, name="embeddings_norm")(x)
    x = layers.Dropout(spec.dropout)(x)  # (B, T, H)
    for i in range(spec.layers):
        x = TransformerBlock(spec, name=f"transformer_block_{i}")(x)
    pooled = layers.Dense(spec.hidden, activation="tanh", name="pooler")(x[:, 0])  # the first token
    return keras.Model(tokens, layers.Dense(spec.num_classes, name="classifier")(pooled), name="bert")


def build(spec: ModelSpec, same_padding: bool = False) -> keras.Model:
    """The reference for `spec`; `same_padding`: Keras' `same` on the 3x3 stride-2 convolutions too
    (bottom and right only: not PyTorch's arithmetic)."""
    if isinstance(spec, MLPSpec):
        return mlp(spec)
    if isinstance(spec, ResNetSpec):
        return resnet(spec, same_padding)
    if isinstance(spec, BertSpec):
        return bert(spec)
    raise TypeError(f"no Keras reference for {type(spec).__name__}")


# --- canonical weights -> this model's variables -------------------------------------------------


def _resnet_layer(module: str) -> str:
    if module == "head":
        return "predictions"
    if module.startswith("stem."):
        return f"conv1_{module.split('.')[1]}"  # stem.conv -> conv1_conv, stem.bn -> conv1_bn
    m = re.fullmatch(r"stages\.(\d+)\.(\d+)\.(shortcut\.conv|shortcut\.bn|conv1|bn1|conv2|bn2)", module)
    if m is None:
        raise KeyError(f"no reference layer for canonical {module!r}")
    part = {"conv1": "1_conv", "bn1": "1_bn", "conv2": "2_conv", "bn2": "2_bn"}.get(m[3]) or f"0_{m[3].split('.')[1]}"
    return f"conv{int(m[1]) + 2}_block{int(m[2]) + 1}_{part}"


def _bert_variable(model: keras.Model, module: str, leaf: str, spec: BertSpec) -> tuple[Any, Any]:
    """(variable, canonical array -> the variable's layout) for one canonical BERT tensor."""
    h, heads = spec.hidden, spec.heads
    linear = lambda w: w.T  # noqa: E731  (out, in) -> Dense's (in, out)
    if module == "embeddings.word":
        return model.get_layer("embeddings").token_emb.embeddings, None
    if module == "embeddings.position":
        return model.get_layer("embeddings").pos_emb.embeddings, None
    if module in ("embeddings.norm", "pooler", "head"):
        layer = model.get_layer(
            {"embeddings.norm": "embeddings_norm", "pooler": "pooler", "head": "classifier"}[module]
        )
        return _dense_or_norm(layer, leaf), linear if leaf == "weight" and module != "embeddings.norm" else None
    i, rest = re.fullmatch(r"layers\.(\d+)\.(.+)", module).groups()
    block = model.get_layer(f"transformer_block_{i}")
    if rest in ("attn.query", "attn.key", "attn.value"):
        # EinsumDense kernel (H, heads, head_dim), bias (heads, head_dim): output row r is head r // hd
        dense = getattr(block.att, f"{rest.split('.')[1]}_dense")
        if leaf == "weight":
            return dense.kernel, lambda w: w.T.reshape(h, heads, h // heads)
        return dense.bias, lambda b: b.reshape(heads, h // heads)
    if rest == "attn.out":  # kernel (heads, head_dim, H): input column c is head c // hd
        if leaf == "weight":
            return block.att.output_dense.kernel, lambda w: w.T.reshape(heads, h // heads, h)
        return block.att.output_dense.bias, None
    layer = {
        "attn_norm": block.layernorm1,
        "ffn.inner": block.ffn.layers[0],
        "ffn.outer": block.ffn.layers[1],
        "ffn_norm": block.layernorm2,
    }[rest]
    return _dense_or_norm(layer, leaf), linear if leaf == "weight" and rest.startswith("ffn.") else None


def _dense_or_norm(layer: Any, leaf: str) -> Any:
    if isinstance(layer, (layers.LayerNormalization, layers.BatchNormalization)):
        return {
            "weight": layer.gamma,
            "bias": layer.beta,
            "running_mean": getattr(layer, "moving_mean", None),
            "running_var": getattr(layer, "moving_variance", None),
        }[leaf]
    return {"weight": layer.kernel, "bias": layer.bias}[leaf]


def load_canonical(model: keras.Model, spec: ModelSpec, weights: dict[str, np.ndarray]) -> None:
    """Assign every canonical tensor to its variable (transposed into Keras' layouts); every variable
    of the model must be covered."""
    covered = set()
    for name, w in weights.items():
        module, leaf = name.rsplit(".", 1)
        to_layout = None
        if isinstance(spec, MLPSpec):
            var = _dense_or_norm(model.get_layer(f"dense_{module.split('.')[1]}"), leaf)
            to_layout = np.transpose if leaf == "weight" else None
        elif isinstance(spec, ResNetSpec):
            layer = model.get_layer(_resnet_layer(module))
            var = _dense_or_norm(layer, leaf)
            if isinstance(layer, layers.Conv2D):
                to_layout = lambda k: np.transpose(k, (2, 3, 1, 0))  # noqa: E731  (O, I, kh, kw) -> (kh, kw, I, O)
            elif isinstance(layer, layers.Dense) and leaf == "weight":
                to_layout = np.transpose
        else:
            var, to_layout = _bert_variable(model, module, leaf, spec)
        value = w if to_layout is None else to_layout(w)
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"{name}: canonical {value.shape} but reference {tuple(var.shape)}")
        var.assign(np.ascontiguousarray(value, np.float32))
        covered.add(id(var))
    missing = [v.path for v in model.weights if id(v) not in covered]
    if missing:
        raise ValueError(f"reference variables without a canonical tensor: {missing[:5]}")


# --- optimizers and schedule --------------------------------------------------------------------


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from lr/W over the first W updates, then linear decay to 0 at the last;
    Keras calls it with the optimizer's iterations (0 for the first update)."""

    def __init__(self, lr: float, warmup_steps: int, total_steps: int) -> None:
        self.lr, self.w, self.t = lr, warmup_steps, total_steps

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        warm = (step + 1.0) / self.w
        decay = ops.maximum(0.0, (self.t - step) / max(1, self.t - self.w))
        return self.lr * ops.where(step < self.w, warm, decay)

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "warmup_steps": self.w, "total_steps": self.t}


class SGD(keras.optimizers.Optimizer):
    """SGD with PyTorch's arithmetic: g += wd * w (coupled decay); b = mu * b + g; w -= lr * b."""

    def __init__(self, learning_rate: Any, momentum: float, weight_decay: float, name: str = "sgd") -> None:
        super().__init__(learning_rate=learning_rate, name=name)
        self.momentum, self.coupled_decay = momentum, weight_decay

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        self.buffers = self.add_optimizer_variables(variables, "momentum") if self.momentum else []

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.coupled_decay:
            g = ops.add(g, ops.multiply(variable, self.coupled_decay))
        if self.momentum:
            b = self.buffers[self._get_variable_index(variable)]
            g = ops.add(ops.multiply(b, self.momentum), g)
            self.assign(b, g)
        self.assign_sub(variable, ops.multiply(g, lr))


class AdamW(keras.optimizers.Optimizer):
    """AdamW with PyTorch's arithmetic: Keras' base class first decays w -= lr * wd * w (decoupled, as
    torch.optim.AdamW), then w -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    def __init__(self, learning_rate: Any, weight_decay: float, beta_1: float, beta_2: float, epsilon: float) -> None:
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, name="adamw")
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        self.exp_avg = self.add_optimizer_variables(variables, "exp_avg")
        self.exp_avg_sq = self.add_optimizer_variables(variables, "exp_avg_sq")

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        t = ops.cast(self.iterations + 1, variable.dtype)
        i = self._get_variable_index(variable)
        m, v = self.exp_avg[i], self.exp_avg_sq[i]
        self.assign_add(m, ops.multiply(ops.subtract(g, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(g), v), 1 - self.beta_2))
        bias_correction1 = 1 - ops.power(ops.cast(self.beta_1, variable.dtype), t)
        bias_correction2_sqrt = ops.sqrt(1 - ops.power(ops.cast(self.beta_2, variable.dtype), t))
        denom = ops.add(ops.divide(ops.sqrt(v), bias_correction2_sqrt), self.epsilon)
        self.assign_sub(variable, ops.multiply(ops.divide(m, denom), lr / bias_correction1))


def schedule(opt: OptimizerSpec) -> float | WarmupLinearDecay:
    """The spec's learning rate: constant, or warm-up over W = round(warmup x total) updates (at least 1)
    and linear decay."""
    if opt.schedule == "constant" or opt.total_steps <= 0:
        return opt.lr
    return WarmupLinearDecay(opt.lr, max(1, round(opt.warmup * opt.total_steps)), opt.total_steps)


def optimizer(opt: OptimizerSpec, keras_own: bool = False) -> keras.optimizers.Optimizer:
    """The spec's optimizer and schedule, with PyTorch's arithmetic; `keras_own`: Keras' own SGD (the
    rate inside the velocity; its weight decay decoupled, w -= lr * wd * w) or AdamW (epsilon before
    the bias correction), as a Keras user would write them."""
    lr = schedule(opt)
    if keras_own and opt.name == "sgd":
        return keras.optimizers.SGD(lr, momentum=opt.momentum, weight_decay=opt.weight_decay or None)
    if keras_own and opt.name == "adamw":
        return keras.optimizers.AdamW(
            lr, weight_decay=opt.weight_decay, beta_1=opt.beta1, beta_2=opt.beta2, epsilon=opt.eps
        )
    if opt.name == "sgd":
        return SGD(lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    if opt.name == "adamw":
        return AdamW(lr, weight_decay=opt.weight_decay, beta_1=opt.beta1, beta_2=opt.beta2, epsilon=opt.eps)
    raise ValueError(f"no reference optimizer {opt.name!r}")
