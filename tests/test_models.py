"""Model specs: parameter counts explained, and the PyTorch models built to the canonical layout."""

from __future__ import annotations

import numpy as np
import pytest

from workers.common import specs
from workers.common.weights import initial_weights, load_npz, save_npz


def test_mlp_parameter_count() -> None:
    # 784*512 + 512  +  512*512 + 512  +  512*10 + 10
    assert specs.num_parameters(specs.get_spec("mlp")) == 401_920 + 262_656 + 5_130 == 669_706


def test_resnet_parameter_counts() -> None:
    # CIFAR ResNet-18/34 (3x3 stem, no max-pool, BN without conv bias, 1x1 projection shortcuts): the
    # well-known 11,173,962 and 21,282,122 for 10 classes; the head alone is 512*10 + 10.
    assert specs.num_parameters(specs.get_spec("resnet18")) == 11_173_962
    assert specs.num_parameters(specs.get_spec("resnet34")) == 21_282_122


def test_bert_parameter_count() -> None:
    # embeddings: 8192*256 words + 128*256 positions + 2*256 LayerNorm            = 2,130,432
    # per layer: 4*(256*256 + 256) attention + 256*1024 + 1024 + 1024*256 + 256 FFN
    #            + 2*(2*256) LayerNorms                                             =   789,760 (x4)
    # pooler 256*256 + 256 = 65,792; head 256*2 + 2 = 514
    assert specs.num_parameters(specs.get_spec("bert")) == 2_130_432 + 4 * 789_760 + 65_792 + 514 == 5_355_778


def test_overrides_change_the_spec_and_are_checked() -> None:
    small = specs.get_spec(
        "bert", {"layers": 1, "hidden": 64, "heads": 2, "ffn": 128, "vocab_size": 512, "seq_len": 32}
    )
    assert small.layers == 1 and specs.num_parameters(small) < 100_000
    assert specs.get_spec("resnet18", {"widths": [8, 16, 32, 64]}).widths == (8, 16, 32, 64)
    assert specs.get_spec("mlp", {"optimizer": {"lr": 0.1}}).optimizer.lr == 0.1
    with pytest.raises(KeyError, match="no setting 'depth'"):
        specs.get_spec("bert", {"depth": 3})


def test_initial_weights_are_deterministic_and_follow_the_scheme(tmp_path) -> None:
    spec = specs.get_spec("resnet18")
    a, b = initial_weights(spec, 0), initial_weights(spec, 0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["stem.conv.weight"], initial_weights(spec, 1)["stem.conv.weight"])
    # Kaiming normal, fan_out: std = sqrt(2 / (512 * 3 * 3)) for the last stage's convolutions
    w = a["stages.3.1.conv2.weight"]
    assert w.std() == pytest.approx(np.sqrt(2 / (512 * 9)), rel=0.01)
    assert (a["stem.bn.weight"] == 1).all() and (a["stem.bn.running_var"] == 1).all()
    save_npz(str(tmp_path / "w.npz"), a)
    back = load_npz(str(tmp_path / "w.npz"))
    assert set(back) == set(a) and all(np.array_equal(back[k], a[k]) for k in a)


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name", list(specs.MODELS))
def test_torch_model_matches_the_canonical_layout(name: str) -> None:
    from workers.pytorch_worker import models

    spec = specs.get_spec(name)
    model = models.build(spec)
    canonical = specs.canonical_params(spec)
    state = models.canonical_state(model)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: p.shape for k, p in canonical.items()}
    assert sum(p.numel() for p in model.parameters()) == specs.num_parameters(spec)
    weights = initial_weights(spec, 0)
    models.load_canonical(model, spec, weights)
    exported = models.export_canonical(model, spec)
    assert all(np.array_equal(exported[k], weights[k]) for k in weights)


def test_torch_forward_shapes() -> None:
    from workers.pytorch_worker import models

    for name, x in (
        ("mlp", torch.zeros(2, 784)),
        ("resnet18", torch.zeros(2, 3, 32, 32)),
        ("bert", torch.zeros(2, 128, dtype=torch.long)),
    ):
        spec = specs.get_spec(name)
        model = models.build(spec).eval()
        assert tuple(model(x).shape) == (2, spec.num_classes)


def test_load_canonical_refuses_mismatches() -> None:
    from workers.pytorch_worker import models

    spec = specs.get_spec("mlp")
    model = models.build(spec)
    weights = initial_weights(spec, 0)
    weights["layers.0.weight"] = weights["layers.0.weight"][:, :10]
    with pytest.raises(ValueError, match=r"layers\.0\.weight"):
        models.load_canonical(model, spec, weights)
    del weights["layers.0.weight"]
    with pytest.raises(ValueError, match="canonical names differ"):
        models.load_canonical(model, spec, weights)


def test_flop_counts_by_hand() -> None:
    # MLP: 2 * (784*512 + 512*512 + 512*10) multiply-adds
    assert specs.forward_flops(specs.get_spec("mlp")) == 2 * (784 * 512 + 512 * 512 + 512 * 10) == 1_337_344
    # BERT-Mini, per layer with T=128, H=256, F=1024:
    #   Q, K, V, out projections 4 * 2*T*H*H = 67,108,864; QK^T and PV 2 * 2*T*T*H = 16,777,216;
    #   FFN 2 * 2*T*H*F = 134,217,728  -> 218,103,808 per layer, x4 = 872,415,232
    #   + pooler 2*256*256 = 131,072 + head 2*256*2 = 1,024
    assert specs.forward_flops(specs.get_spec("bert")) == 872_415_232 + 131_072 + 1_024
    # CIFAR ResNet-18 in multiply-adds (convolutions: c_in * c_out * k*k * H_out*W_out):
    #   stem 3*64*9*1024 = 1,769,472; stage 1: 4 convs of 64*64*9*1024 = 150,994,944;
    #   stages 2-4 alike: 18,874,368 (strided) + 3 * 37,748,736 + 2,097,152 (shortcut) = 134,217,728 each;
    #   head 512*10 = 5,120  -> 555,422,720 (tools that also count BN and ReLU say 0.56 G)
    assert specs.forward_flops(specs.get_spec("resnet18")) == 2 * (1_769_472 + 150_994_944 + 3 * 134_217_728 + 5_120)
    # ResNet-34: stem; 6 convs at 64; 18,874,368 + 7, 11 and 5 convs of 37,748,736 + shortcuts; head
    r34 = 1_769_472 + 6 * 37_748_736 + 3 * (18_874_368 + 2_097_152) + (7 + 11 + 5) * 37_748_736 + 5_120
    assert specs.forward_flops(specs.get_spec("resnet34")) == 2 * r34 == 2 * 1_159_402_496
    assert specs.train_flops(specs.get_spec("mlp")) == 3 * 1_337_344


def test_learning_rate_schedule_by_hand() -> None:
    opt = specs.OptimizerSpec("adamw", lr=1.0, schedule="linear", warmup=0.2, total_steps=10)
    assert opt.warmup_steps() == 2
    # warm-up 1/2, 2/2; then (10 - t) / 8 down to the last update's 1/8
    assert [opt.lr_factor(t) for t in range(10)] == [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]
    assert specs.OptimizerSpec("sgd", lr=0.1).lr_factor(5) == 1.0  # constant
    bert = specs.with_total_steps(specs.get_spec("bert"), 96)
    assert bert.optimizer.total_steps == 96 and bert.optimizer.warmup_steps() == 10
