"""PyTorch references: torchvision's ResNet layout, `nn.MultiheadAttention` for BERT, `torch.optim`.

The ResNet is torchvision's `BasicBlock`/`ResNet` with the CIFAR stem (3x3 stride-1 convolution, no
max-pool): `conv1`, `bn1`, `layer1..4`, `downsample`, `fc`. BERT's encoder layer is the post-LN layer
of `nn.TransformerEncoderLayer` written around `nn.MultiheadAttention` (packed q/k/v projection),
without that layer's extra dropout inside the feed-forward block, which BERT does not have.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.common.specs import BertSpec, MLPSpec, ModelSpec, OptimizerSpec, ResNetSpec

# --- models ------------------------------------------------------------------------------------


def mlp(spec: MLPSpec) -> nn.Sequential:
    """Linear, ReLU, ..., Linear: modules 0, 2, 4 are the Linear layers."""
    mods: list[nn.Module] = []
    for a, b in itertools.pairwise([spec.in_features, *spec.hidden, spec.num_classes]):
        mods += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    return nn.Sequential(*mods[:-1])


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, norm: Any) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        norm = lambda n: nn.BatchNorm2d(n, eps=spec.bn_eps, momentum=spec.bn_momentum)  # noqa: E731
        self.inplanes = spec.widths[0]
        self.conv1 = conv3x3(spec.in_channels, self.inplanes)  # CIFAR stem: 3x3, stride 1, no max-pool
        self.bn1 = norm(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.stages = len(spec.widths)
        for i, (blocks, planes) in enumerate(zip(spec.stage_sizes, spec.widths, strict=True)):
            self.add_module(f"layer{i + 1}", self._make_layer(planes, blocks, 1 if i == 0 else 2, norm))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(spec.widths[-1], spec.num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int, norm: Any) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), norm(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, norm)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes, 1, None, norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32)
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (B, classes)


class EncoderLayer(nn.Module):
    """Post-LN: x = norm1(x + dropout(self_attn(x))); x = norm2(x + dropout(linear2(gelu(linear1(x)))))."""

    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        h = spec.hidden
        self.self_attn = nn.MultiheadAttention(h, spec.heads, dropout=spec.dropout, batch_first=True)
        self.linear1 = nn.Linear(h, spec.ffn)
        self.activation = nn.GELU(approximate="none" if spec.gelu == "exact" else "tanh")
        self.linear2 = nn.Linear(spec.ffn, h)
        self.norm1 = nn.LayerNorm(h, eps=spec.ln_eps)
        self.norm2 = nn.LayerNorm(h, eps=spec.ln_eps)
        self.dropout1 = nn.Dropout(spec.dropout)
        self.dropout2 = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H)
        x = self.norm1(x + self.dropout1(self.self_attn(x, x, x, need_weights=False)[0]))
        return self.norm2(x + self.dropout2(self.linear2(self.activation(self.linear1(x)))))


class Bert(nn.Module):
    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(spec.vocab_size, spec.hidden)
        self.position_embeddings = nn.Embedding(spec.seq_len, spec.hidden)
        self.norm = nn.LayerNorm(spec.hidden, eps=spec.ln_eps)
        self.dropout = nn.Dropout(spec.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(spec) for _ in range(spec.layers))
        self.pooler = nn.Sequential(nn.Linear(spec.hidden, spec.hidden), nn.Tanh())
        self.classifier = nn.Linear(spec.hidden, spec.num_classes)
        self.register_buffer("position_ids", torch.arange(spec.seq_len), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) int
        x = self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids[: input_ids.shape[1]])
        x = self.dropout(self.norm(x))  # (B, T, H)
        for layer in self.encoder:
            x = layer(x)
        return self.classifier(self.pooler(x[:, 0]))  # (B, classes), from the first token


def build(spec: ModelSpec) -> nn.Module:
    if isinstance(spec, MLPSpec):
        return mlp(spec)
    if isinstance(spec, ResNetSpec):
        return ResNet(spec)
    if isinstance(spec, BertSpec):
        return Bert(spec)
    raise TypeError(f"no PyTorch reference for {type(spec).__name__}")


# --- canonical weights -> this module's parameters -----------------------------------------------

_RESNET_NAMES = [  # canonical module prefix -> torchvision's
    (r"^stem\.conv\.", "conv1."),
    (r"^stem\.bn\.", "bn1."),
    (r"^stages\.(\d+)\.(\d+)\.shortcut\.conv\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
    (r"^stages\.(\d+)\.(\d+)\.shortcut\.bn\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1."),
    (r"^stages\.(\d+)\.(\d+)\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}."),
    (r"^head\.", "fc."),
]
_BERT_NAMES = [
    (r"^embeddings\.word\.", "word_embeddings."),
    (r"^embeddings\.position\.", "position_embeddings."),
    (r"^embeddings\.norm\.", "norm."),
    (r"^layers\.(\d+)\.attn\.out\.", r"encoder.\1.self_attn.out_proj."),
    (r"^layers\.(\d+)\.attn_norm\.", r"encoder.\1.norm1."),
    (r"^layers\.(\d+)\.ffn\.inner\.", r"encoder.\1.linear1."),
    (r"^layers\.(\d+)\.ffn\.outer\.", r"encoder.\1.linear2."),
    (r"^layers\.(\d+)\.ffn_norm\.", r"encoder.\1.norm2."),
    (r"^pooler\.", "pooler.0."),
    (r"^head\.", "classifier."),
]
_QKV = re.compile(r"^layers\.(\d+)\.attn\.(query|key|value)\.(weight|bias)$")


def _rename(name: str, table: list[tuple[str, Any]]) -> str:
    for pattern, repl in table:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    raise KeyError(f"no reference parameter for canonical {name!r}")


def state_from_canonical(spec: ModelSpec, weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The canonical tensors under this module's names: renamed, and BERT's q, k, v projections packed
    into `nn.MultiheadAttention`'s in_proj (rows [q; k; v]). Canonical layouts are PyTorch's already."""
    out: dict[str, torch.Tensor] = {}
    packed: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for name, w in weights.items():
        if isinstance(spec, MLPSpec):  # layers.i -> Sequential index 2i (ReLUs between)
            i, leaf = name.split(".")[1:]
            out[f"{2 * int(i)}.{leaf}"] = torch.from_numpy(np.ascontiguousarray(w))
        elif isinstance(spec, ResNetSpec):
            out[_rename(name, _RESNET_NAMES)] = torch.from_numpy(np.ascontiguousarray(w))
        elif (m := _QKV.match(name)) is not None:
            packed.setdefault((m[1], m[3]), {})[m[2]] = w
        else:
            out[_rename(name, _BERT_NAMES)] = torch.from_numpy(np.ascontiguousarray(w))
    for (layer, leaf), parts in packed.items():
        qkv = np.concatenate([parts["query"], parts["key"], parts["value"]])
        out[f"encoder.{layer}.self_attn.in_proj_{leaf}"] = torch.from_numpy(qkv)
    return out


def load_canonical(model: nn.Module, spec: ModelSpec, weights: dict[str, np.ndarray]) -> None:
    """Every parameter and buffer of the model from the canonical weights (strict: none left over)."""
    state = state_from_canonical(spec, weights)
    own = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if own != set(state):
        raise ValueError(f"reference and canonical differ: {sorted(own ^ set(state))[:5]}")
    model.load_state_dict(state, strict=False)


# --- optimizer and schedule ---------------------------------------------------------------------


def lr_lambda(opt: OptimizerSpec) -> Any:
    """The spec's schedule as LambdaLR's factor of update n: linear warm-up from lr/W over W updates,
    then linear decay to 0 at the last update (BERT's recipe), W = round(warmup x total), at least 1."""
    if opt.schedule == "constant" or opt.total_steps <= 0:
        return lambda n: 1.0
    w, t = max(1, round(opt.warmup * opt.total_steps)), opt.total_steps
    return lambda n: (n + 1) / w if n < w else max(0.0, (t - n) / max(1, t - w))


def optimizer(model: nn.Module, opt: OptimizerSpec) -> tuple[torch.optim.Optimizer, Any]:
    """torch.optim's SGD (coupled weight decay, PyTorch's momentum) or AdamW, and its LambdaLR."""
    if opt.name == "sgd":
        o: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
        )
    elif opt.name == "adamw":
        o = torch.optim.AdamW(
            model.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps, weight_decay=opt.weight_decay
        )
    else:
        raise ValueError(f"no reference optimizer {opt.name!r}")
    return o, torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(opt))
