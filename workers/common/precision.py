"""What each precision means, the same in every framework.

`fp32` is true IEEE fp32 arithmetic everywhere, matmuls and convolutions included: each framework's
default differs on an NVIDIA GPU (PyTorch: fp32 matmuls but TF32 convolutions; TensorFlow: TF32 on;
JAX: TF32 matmuls), which would make an fp32 comparison compare three different arithmetics. `tf32`
is a precision of its own: fp32 storage and math, with matmuls and convolutions on the tensor cores'
TF32 (NVIDIA GPUs from Ampere on). `fp16` and `bf16` are mixed precision; their fp32 parts follow the
fp32 policy. Each worker sets the policy explicitly and reports it (`matmul_precision` in the row).
"""

from __future__ import annotations

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
# fp16's dynamic loss scaling, the same in every framework (Keras starts at 2**15, PyTorch and this JAX
# worker at 2**16): the first scale, and the overflow-free steps after which it doubles (it halves on
# an overflow, whose step is skipped)
FP16_INITIAL_SCALE = 2.0**16
FP16_GROWTH_INTERVAL = 2000
TF32_MIN_CAPABILITY = (8, 0)  # Ampere


def compute_dtype(precision: str) -> str:
    """The dtype the model computes in: tf32 is fp32 whose matmuls use TF32."""
    return "fp32" if precision == "tf32" else precision


def matmul_policy(precision: str) -> str:
    """How fp32 matmuls and convolutions run: `ieee` (true fp32) or `tf32`."""
    return "tf32" if precision == "tf32" else "ieee"


def tf32_unsupported(precision: str, gpu: bool, capability: tuple[int, int] | None) -> str | None:
    """Why a tf32 cell cannot run on this device (a CPU, a GPU before Ampere), else None."""
    if precision != "tf32":
        return None
    if not gpu:
        return "tf32 is a tensor-core mode of NVIDIA GPUs (Ampere and later); a CPU computes fp32"
    if capability is not None and tuple(capability) < TF32_MIN_CAPABILITY:
        return (
            f"tf32 needs an NVIDIA GPU of compute capability 8.0 or later; this one is {capability[0]}.{capability[1]}"
        )
    return None
