"""The shared model specs in PyTorch, with module names equal to the canonical parameter names."""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workers.common.specs import BertSpec, MLPSpec, ModelSpec, ResNetSpec, canonical_params, resnet_blocks


class MLP(nn.Module):
    def __init__(self, spec: MLPSpec) -> None:
        super().__init__()
        sizes = [spec.in_features, *spec.hidden, spec.num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 784) -> (B, classes)
        # unpacked, not sliced: `self.layers[:-1]` builds a new ModuleList every call (docs/findings.md)
        *hidden, last = self.layers
        for layer in hidden:
            x = F.relu(layer(x))
        return last(x)


class ConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int, spec: ResNetSpec) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=spec.bn_eps, momentum=spec.bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, spec: ResNetSpec) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, eps=spec.bn_eps, momentum=spec.bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=spec.bn_eps, momentum=spec.bn_momentum)
        self.shortcut = ConvBN(c_in, c_out, 1, stride, spec) if (stride != 1 or c_in != c_out) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        self.stem = ConvBN(spec.in_channels, spec.widths[0], 3, 1, spec)
        stages: list[list[BasicBlock]] = [[] for _ in spec.stage_sizes]
        for name, c_in, c_out, stride in resnet_blocks(spec):
            stages[int(name.split(".")[1])].append(BasicBlock(c_in, c_out, stride, spec))
        self.stages = nn.ModuleList(nn.ModuleList(s) for s in stages)
        self.head = nn.Linear(spec.widths[-1], spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32)
        x = F.relu(self.stem(x))  # (B, 64, 32, 32)
        for stage in self.stages:
            for block in stage:
                x = block(x)  # (B, 512, 4, 4) after the last stage
        return self.head(x.mean(dim=(2, 3)))  # (B, classes)


class Attention(nn.Module):
    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        h = spec.hidden
        self.heads, self.dropout = spec.heads, spec.dropout
        self.query, self.key, self.value, self.out = (nn.Linear(h, h) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (
            p(x).view(B, T, self.heads, C // self.heads).transpose(1, 2) for p in (self.query, self.key, self.value)
        )
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        self.inner = nn.Linear(spec.hidden, spec.ffn)
        self.outer = nn.Linear(spec.ffn, spec.hidden)
        self.approximate = "none" if spec.gelu == "exact" else "tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(F.gelu(self.inner(x), approximate=self.approximate))


class EncoderLayer(nn.Module):
    """Post-LN: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        self.attn = Attention(spec)
        self.attn_norm = nn.LayerNorm(spec.hidden, eps=spec.ln_eps)
        self.ffn = FeedForward(spec)
        self.ffn_norm = nn.LayerNorm(spec.hidden, eps=spec.ln_eps)
        self.drop = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.drop(self.attn(x)))
        return self.ffn_norm(x + self.drop(self.ffn(x)))


class Embeddings(nn.Module):
    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        self.word = nn.Embedding(spec.vocab_size, spec.hidden)
        self.position = nn.Embedding(spec.seq_len, spec.hidden)
        self.norm = nn.LayerNorm(spec.hidden, eps=spec.ln_eps)
        self.drop = nn.Dropout(spec.dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) int
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        return self.drop(self.norm(self.word(tokens) + self.position(pos)))  # (B, T, H)


class Bert(nn.Module):
    def __init__(self, spec: BertSpec) -> None:
        super().__init__()
        self.embeddings = Embeddings(spec)
        self.layers = nn.ModuleList(EncoderLayer(spec) for _ in range(spec.layers))
        self.pooler = nn.Linear(spec.hidden, spec.hidden)
        self.head = nn.Linear(spec.hidden, spec.num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(torch.tanh(self.pooler(x[:, 0])))  # (B, classes), from the first token


def build(spec: ModelSpec) -> nn.Module:
    """The PyTorch module for a spec."""
    if isinstance(spec, MLPSpec):
        return MLP(spec)
    if isinstance(spec, ResNetSpec):
        return ResNet(spec)
    if isinstance(spec, BertSpec):
        return Bert(spec)
    raise TypeError(f"no PyTorch model for {type(spec).__name__}")


def canonical_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under their canonical names (PyTorch's bookkeeping buffers left out)."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def load_canonical(model: nn.Module, spec: ModelSpec, weights: dict[str, np.ndarray]) -> nn.Module:
    """Copy canonical tensors into the model (returned); names and shapes must match the spec's exactly."""
    state = canonical_state(model)
    if set(state) != set(weights) or set(weights) != set(canonical_params(spec)):
        missing, extra = sorted(set(weights) - set(state)), sorted(set(state) - set(weights))
        raise ValueError(f"canonical names differ: not in model {missing[:5]}, not in weights {extra[:5]}")
    with torch.no_grad():
        for name, tensor in state.items():
            src = torch.from_numpy(np.ascontiguousarray(weights[name]))
            if tuple(src.shape) != tuple(tensor.shape):
                raise ValueError(f"{name}: weights {tuple(src.shape)} but model {tuple(tensor.shape)}")
            tensor.copy_(src)
    return model


def export_canonical(model: nn.Module, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The model's tensors as canonical NumPy arrays, under the spec's names."""
    state = canonical_state(model)
    return {k: state[k].detach().float().cpu().numpy() for k in canonical_params(spec)}
