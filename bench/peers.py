"""Outside tools as peers of mlbench's figures, on the cells they can time (PyTorch).

- `timer`: PyTorch's own benchmark timer, `torch.utils.benchmark.Timer.blocked_autorange`, on the
  PyTorch reference model (`bench.references.torch_models`, which computes the worker's logits): one
  training step (zero_grad, forward, loss, backward, optimizer and schedule step) on one batch of the
  cell's size, and inference (eval mode, `torch.inference_mode`) at batch 1 and at the cell's batch,
  under the cell's intra-op threads. Its medians stand beside mlbench's median step time and its p50
  latencies.
- `hf-bert`: Hugging Face transformers' `BertForSequenceClassification`, built from a `BertConfig`
  sized like the spec (no download: its own random initialisation), trained as the hand-written loops
  are (distinct batches prepared up front, AdamW with transformers' linear warm-up schedule, one sync at
  the end): how fast a widely used implementation of the same architecture trains here. Its weights are
  not the canonical ones and it differs in small ways the spec does not have (a token-type embedding
  added to every token, a dropout before the classifier); it is a speed reference, not a logits one.

Prints one JSON line.

    python -m bench.peers timer --model resnet18 --batch-size 64 [--threads 2]
    python -m bench.peers hf-bert --batch-size 32 --warmup 3 --steps 15 [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

from bench.handwritten import batches, use_threads
from workers.common.specs import BertSpec, get_spec, with_total_steps
from workers.common.weights import initial_weights

MIN_RUN_S = 2.0  # blocked_autorange's timed work per figure (after its own block-size warm-up)
WARMUP = 3  # untimed calls before each figure: allocator, oneDNN primitive caches


def _tensor(a: np.ndarray) -> Any:
    import torch

    t = torch.from_numpy(a)
    return t.long() if t.dtype == torch.int32 else t


def timer(model: str, bs: int, threads: int, min_run_s: float = MIN_RUN_S) -> dict[str, Any]:
    """Medians (s) of blocked_autorange for a training step and for inference at batch 1 and `bs`."""
    import torch
    import torch.nn.functional as F
    from torch.utils.benchmark import Timer

    from bench.references import torch_models as ref

    spec = with_total_steps(get_spec(model), 10_000)  # a schedule that stays in its warm-up: any lr will do
    net = ref.build(spec)
    ref.load_canonical(net, spec, initial_weights(spec, 0))
    opt, sched = ref.optimizer(net, spec.optimizer)
    (x, y), *_ = batches(model, bs, 1, "NCHW")
    x, y = _tensor(x), _tensor(y).long()

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        sched.step()

    def measure(stmt: str, env: dict[str, Any]) -> dict[str, Any]:
        t = Timer(stmt=stmt, globals=env, num_threads=threads, label=model)
        for _ in range(WARMUP):
            t.timeit(1)
        m = t.blocked_autorange(min_run_time=min_run_s)
        return {"median_s": m.median, "iqr_s": m.iqr, "runs": len(m.times), "number_per_run": m.number_per_run}

    out: dict[str, Any] = {"peer": "torch.utils.benchmark.Timer.blocked_autorange", "model": model}
    net.train()
    out["train_step"] = measure("train_step()", {"train_step": train_step})
    net.eval()
    for name, xb in (("inference_b1", x[:1].clone()), ("inference", x)):
        out[name] = measure("with torch.inference_mode(): net(xb)", {"torch": torch, "net": net, "xb": xb})
    out["batch_size"], out["threads"] = bs, torch.get_num_threads()
    return out


def hf_bert_config(spec: BertSpec) -> Any:
    """A transformers BertConfig of the spec's sizes (exact GELU, its LayerNorm epsilon and dropout)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=spec.ffn,
        hidden_act="gelu" if spec.gelu == "exact" else "gelu_new",
        hidden_dropout_prob=spec.dropout,
        attention_probs_dropout_prob=spec.dropout,
        max_position_embeddings=spec.seq_len,
        type_vocab_size=1,
        layer_norm_eps=spec.ln_eps,
        initializer_range=spec.init_std,
        num_labels=spec.num_classes,
    )


def hf_bert(bs: int, warmup: int, steps: int) -> dict[str, Any]:
    """Samples/s of `steps` timed training steps of transformers' BERT after `warmup` untimed ones."""
    import torch
    from transformers import BertForSequenceClassification, get_linear_schedule_with_warmup

    spec = get_spec("bert")
    assert isinstance(spec, BertSpec)
    torch.manual_seed(0)
    net = BertForSequenceClassification(hf_bert_config(spec))
    o, total = spec.optimizer, warmup + steps
    opt = torch.optim.AdamW(net.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, max(1, round(o.warmup * total)), total)
    data_ = [(_tensor(x), _tensor(y).long()) for x, y in batches("bert", bs, total, "NCHW")]
    net.train()

    def run(first: int, n: int) -> float:
        t0 = time.perf_counter()
        for x, y in data_[first : first + n]:
            opt.zero_grad(set_to_none=True)
            loss = net(input_ids=x, labels=y).loss
            loss.backward()
            opt.step()
            sched.step()
        loss.item()  # the only sync
        return time.perf_counter() - t0

    run(0, warmup)
    seconds = run(warmup, steps)
    return {
        "peer": "transformers.BertForSequenceClassification",
        "attn_implementation": net.config._attn_implementation,
        "parameters": sum(p.numel() for p in net.parameters()),
        "batch_size": bs,
        "samples_per_second": bs * steps / seconds,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("peer", choices=["timer", "hf-bert"])
    p.add_argument("--model", default="bert")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--min-run-s", type=float, default=MIN_RUN_S)
    p.add_argument("--threads", type=int, help="intra-op threads, as a suite's `threads`")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the model is made from a config
    if a.threads:
        use_threads("pytorch", a.threads)
    threads = a.threads or __import__("torch").get_num_threads()
    out = (
        timer(a.model, a.batch_size, threads, a.min_run_s)
        if a.peer == "timer"
        else hf_bert(a.batch_size, a.warmup, a.steps)
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
