"""Suite files: YAML -> a validated, typed `Suite`, with one-line errors that say how to fix them."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from workers.common import precision, registry, specs
from workers.common.data import DATA_PATH_KEYS
from workers.common.datapath import formats, storage
from workers.common.devices import Device

BUILTIN_WORKERS = {name: f.module for name, f in registry.FRAMEWORKS.items()}
PRECISIONS = precision.PRECISIONS
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
DATA_PARALLEL_CHECK_DEVICE = "cpu:0,1"  # where `mlbench verify` trains data parallel against one device
CELL_AXES = ("framework", "model", "device", "precision", "batch_size")
EXCLUDE_KEYS = (
    *CELL_AXES,
    "format",
    "loader",
    "loader_workers",
    "emulate_compute_s",
    "storage",
)  # the data path's axes too


class ConfigError(Exception):
    """A suite file that cannot be used; the message is one line and says what is allowed."""


def unique(v: list[Any]) -> list[Any]:
    """An axis's values, each once (a value listed twice would make two identical cells)."""
    dupes = sorted({str(x) for x in v if v.count(x) > 1})
    if dupes:
        raise ValueError(f"listed more than once: {', '.join(dupes)}")
    return v


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DATA_FORMATS = ("memory", *formats.FORMATS)


class DatasetConfig(Strict):
    # a public dataset (workers/common/public_data.py): cifar10 (images), sst2 (GLUE's SST-2, tokenised
    # here: the BERT-like encoder), covertype (UCI Covertype: the MLP, with in_features 54 and
    # num_classes 7), or public (each model's family's: all three in one suite); read from `path`, else
    # downloaded into a cache and checked against the published checksum. Cells of a model whose data
    # the set does not hold are skipped with the reason
    name: Literal["synthetic", "cifar10", "sst2", "covertype", "public"] = "synthetic"
    # cifar10: the folder with the python batches; sst2: SST-2.zip; covertype: covtype.data.gz
    path: str | None = None
    train_samples: PositiveInt = 1024
    val_samples: PositiveInt = 256
    # the data's own seed (synthetic data and nothing else); None: the suite's first seed. Every training
    # seed of `seeds` reads the same data: a seed varies the initial weights, dropout and the batch order
    seed: int | None = Field(None, ge=0)
    # where training batches come from (an axis: a list makes a cell of each). memory: gathered in host
    # memory before each epoch (the baseline every file-fed cell is compared with); raw, npz, tfrecord,
    # hdf5: the training set as `shards` files of that format, read by the cell's `loader`; imagefolder: a JPEG
    # or PNG file per image in a folder per class, decoded by the loader
    # (workers/common/datapath/formats.py)
    format: list[Literal["memory", "raw", "npz", "tfrecord", "hdf5", "imagefolder"]] = Field(["memory"], min_length=1)
    # imagefolder's files (images only; other models' imagefolder cells are skipped): jpeg (lossy:
    # decoders may differ by a few levels) or png (lossless: the memory cell's bytes)
    image_codec: Literal["jpeg", "png"] | None = None
    # (imagefolder: jpeg unless set; tfrecord: each Example's x the image encoded so, as ImageNet's JPEG
    # shards are, instead of its raw pixel bytes)
    # encoded images stored at this side in pixels (None: the model's input); each loader then resizes the
    # shorter side to the model's and centre-crops, as photographs are fed to a model
    image_size: PositiveInt | None = None
    shards: PositiveInt = 1  # files the training set is split into (DLIO's num_files_train)
    # global: one permutation per epoch; two_level: the shards permuted, then the records within each
    # (DLIO's file and sample shuffle: what a sequential reader can follow), for every cell, memory too
    order: Literal["global", "two_level"] = "global"
    # crop_flip: pad 4, random 32x32 crop, horizontal flip (images), its parameters a hash of (seed,
    # epoch, sample): the same bytes in every framework and for every loader worker count
    augment: Literal["none", "crop_flip"] = "none"
    # where a file-fed cell's shard folders live (workers/common/datapath/storage.py): a local folder
    # (a path or file://) or object storage through fsspec (s3://, gs://, az://); None: beside the
    # dataset in the run's data folder. Object storage is written by `mlbench data prepare`, never by a
    # run; credentials come from the environment and the backend's config files, never from here
    uri: str | None = None
    # object storage only (an axis): stream (each batch's records fetched as the loader reads them) or
    # cache (the shard folder copied to the run's local cache once, then read from there)
    storage: list[Literal["stream", "cache"]] = Field(["stream"], min_length=1)
    # fsspec's options for the backend (s3fs: endpoint_url, client_kwargs: {region_name: ...}); no secrets
    storage_options: dict[str, Any] = Field(default_factory=dict)
    # npz, tfrecord, hdf5: each record's bytes on disk drawn from N(record_bytes, record_bytes_stdev), the
    # sample padded with ballast that every loader reads and discards (DLIO's record_length_bytes and
    # its stdev, for I/O studies: the loader moves the workload's bytes, the model still trains on its
    # own samples); None: the sample's own size. Raw records are the model's fixed layout and image
    # folders hold images: neither takes it
    record_bytes: PositiveInt | None = None
    record_bytes_stdev: int = Field(0, ge=0)

    @field_validator("format", "storage", mode="before")
    @classmethod
    def _one_format(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("storage")
    @classmethod
    def _unique_storage(cls, v: list[str]) -> list[str]:
        return unique(v)

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
        def walk(d: dict[str, Any], at: str) -> None:
            for k, val in d.items():
                if str(k).lower() in storage.SECRET_KEYS:
                    raise ValueError(
                        f"{at}{k} is a credential: it does not belong in a suite file (results and logs keep the "
                        "suite); the backend reads it from the environment or its config files (for s3://: "
                        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials)"
                    )
                if isinstance(val, dict):
                    walk(val, f"{at}{k}.")
                elif isinstance(val, str) and storage.redact(val) != val:
                    raise ValueError(
                        f"{at}{k} holds a user and password; credentials come from the environment or the "
                        "backend's config files, never from the suite"
                    )

        walk(v, "")
        return v

    @field_validator("uri")
    @classmethod
    def _uri_without_secrets(cls, v: str | None) -> str | None:
        if v is not None and storage.redact(v) != v:
            raise ValueError(
                "a URI with a user or password in it; credentials come from the environment, not the suite"
            )
        return v.rstrip("/") if v else v

    @field_validator("format")
    @classmethod
    def _unique_formats(cls, v: list[str]) -> list[str]:
        return unique(v)

    @model_validator(mode="after")
    def _cifar_needs_path(self) -> DatasetConfig:
        if self.name == "public" and self.path:
            raise ValueError("path names one dataset's file; name: public reads three (give one name, or no path)")
        if self.record_bytes_stdev and not self.record_bytes:
            raise ValueError("record_bytes_stdev spreads record_bytes: give record_bytes too")
        padless = [f for f in self.format if f in ("raw", "imagefolder")]
        if self.record_bytes and self.format == ["memory"]:
            raise ValueError("record_bytes: memory reads no records; add npz, tfrecord or hdf5 to format")
        if self.record_bytes and padless:
            raise ValueError(
                f"record_bytes: {padless[0]} records take no ballast (raw: the model's fixed layout, imagefolder: "
                "its images); give npz, tfrecord or hdf5 (memory reads no records)"
            )
        if self.shards > self.train_samples:
            raise ValueError(
                f"shards: {self.shards} files for {self.train_samples} training samples; give at most that many"
            )
        return self

    @property
    def remote(self) -> bool:
        return bool(self.uri) and storage.is_remote(self.uri)  # type: ignore[arg-type]

    def cell_dict(self, fmt: str, mode: str | None = None) -> dict[str, Any]:
        """The cell's `dataset`: one format (and for object storage one way to read it); the data-path
        keys only where they are not the defaults, so that cells of earlier runs keep their ids (seed is
        resolved by the caller). A memory cell reads no files, so it carries no uri."""
        out = self.model_dump(exclude=set(DATA_PATH_KEYS))  # each added below where not its default
        if fmt != "memory":
            out["format"] = fmt
            if fmt == "imagefolder":
                out["image_codec"] = self.image_codec or "jpeg"
            elif fmt == "tfrecord" and self.image_codec:  # JPEG shards; raw-byte shards keep their ids
                out["image_codec"] = self.image_codec
            if self.image_size and out.get("image_codec"):
                out["image_size"] = self.image_size
            if self.record_bytes:  # npz, tfrecord, hdf5 (the validator refuses the others)
                out["record_bytes"] = self.record_bytes
                if self.record_bytes_stdev:
                    out["record_bytes_stdev"] = self.record_bytes_stdev
            if self.uri:
                out["uri"] = self.uri
                if self.remote:
                    out["storage"] = mode or self.storage[0]
                    if self.storage_options:
                        out["storage_options"] = self.storage_options
        if self.order != "global":
            out["order"] = self.order
        if self.order != "global" or fmt != "memory":
            out["shards"] = self.shards
        if self.augment != "none":
            out["augment"] = self.augment
        return out


class LoaderConfig(Strict):
    """How a file-fed cell's batches are loaded (workers/common/datapath/loaders.py). `kind` and
    `workers` are axes like batch_sizes; a `memory` cell has no loader."""

    # native: the framework's own (PyTorch: torch's DataLoader, TensorFlow: tf.data, JAX: Grain);
    # torch, tfdata, grain: that loader in any framework (a cross cell: the loader's cost apart from
    # the framework's; a TensorFlow loader in another framework's worker sees no GPU)
    kind: list[Literal["native", "torch", "tfdata", "grain"]] = Field(["native"], min_length=1)
    # worker processes (torch's num_workers, Grain's worker_count) or parallel calls (tf.data's maps); 0:
    # the training process loads each batch when the step asks for it
    workers: list[int] = Field([0], min_length=1)
    prefetch: int = Field(2, ge=0)  # batches made ahead (torch: per worker; tf.data, Grain: in all)
    read_threads: PositiveInt = 1  # Grain's read threads per worker
    pin_memory: bool = True  # page-locked batches (torch, on a CUDA device; nothing on a CPU)
    # batches placed on the device this many steps ahead of their step, so their host-to-device copies run
    # while earlier steps compute (a CUDA side stream in PyTorch, jax.device_put, a copy under tf.device);
    # 0: each batch is copied as its step starts. On a CPU device there is no copy to hide
    device_prefetch: int = Field(0, ge=0, le=4)
    persistent_workers: bool = True  # torch: the workers stay up across epochs
    # imagefolder: native decodes as each loader's users do (Pillow in DataLoader and Grain workers,
    # tf.io.decode_image in tf.data); pillow: Pillow in every loader, so the decoded bytes are equal
    decoder: Literal["native", "pillow"] = "native"
    # cold: the shard files' pages dropped from the page cache (posix_fadvise DONTNEED, no root needed)
    # before the loader-alone epoch and before each training epoch, so reads reach the disk; warm: left as
    # the last read left them (files just written or read are cached)
    page_cache: Literal["warm", "cold"] = "warm"
    # a planted per-sample CPU cost (rounds of a 32x32 product per sample, in the loader's workers):
    # makes a cell input-bound on purpose, to see what more workers buy
    burn: int = Field(0, ge=0)
    au_threshold: float = Field(0.90, gt=0, le=1)  # accelerator utilisation a cell must reach (DLIO's 0.90)
    # DLIO's emulated compute, an axis: each training step of a file-fed cell replaced by a sleep of this
    # many seconds (the model is not trained), or `measured`: its memory twin's median step time, so a
    # storage team gets AU with real loaders; null: the real step
    emulate_compute_s: list[PositiveFloat | Literal["measured"] | None] = Field([None], min_length=1)

    @field_validator("kind", "workers", "emulate_compute_s", mode="before")
    @classmethod
    def _axis(cls, v: Any) -> Any:
        return [v] if v is None or (isinstance(v, (str, int, float)) and not isinstance(v, bool)) else v

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: list[int]) -> list[int]:
        if any(w < 0 for w in v):
            raise ValueError(f"a count of loader workers is 0 or more, not {min(v)}")
        return unique(v)

    def cell_dict(self, kind: str, workers: int, emulate: float | str | None = None) -> dict[str, Any]:
        """One cell's loader: the knobs that change what it measures (au_threshold is a verdict's);
        emulate_compute_s only where set."""
        out = self.model_dump(
            exclude={"kind", "workers", "au_threshold", "emulate_compute_s", "decoder", "page_cache", "device_prefetch"}
        )
        if self.decoder != "native":  # only where set: earlier runs' cells keep their ids
            out["decoder"] = self.decoder
        if self.device_prefetch and emulate is None:  # an emulated step trains nothing: nothing to place
            out["device_prefetch"] = self.device_prefetch
        if self.page_cache != "warm":
            out["page_cache"] = self.page_cache
        return {
            "kind": kind,
            "workers": workers,
            **out,
            **({"emulate_compute_s": emulate} if emulate is not None else {}),
        }


class InferenceConfig(Strict):
    warmup: int = Field(5, ge=0)  # untimed forward passes first
    runs: PositiveInt = 100  # timed forward passes (p99 of 100 runs is their second-largest)
    min_runs: PositiveInt = 10  # at least this many, even past max_s
    max_s: PositiveFloat = 30.0  # stop adding runs after this long


class RayConfig(Strict):
    """Where `executor: ray` runs. RAY_ADDRESS, when set, wins over `address`, as in every Ray tool."""

    address: str | None = None  # e.g. ray://head:10001 or head:6379; none: a local instance for the run
    num_cpus: PositiveInt | None = None  # of a local instance (default: the physical cores)
    num_gpus: int | None = Field(None, ge=0)  # of a local instance (default: the GPUs NVML sees)
    node_dir: str | None = None  # where nodes keep data, logs and caches (default: <tmp>/mlbench-ray/<run>)


class MaxBatchConfig(Strict):
    """How `mlbench maxbatch` searches for the largest batch that trains without running out of memory."""

    start: PositiveInt = 8  # the first batch probed; doubled until the first out-of-memory
    max_batch: PositiveInt = 65536  # the cap: a search that fits here stops (first_failing_batch_size null)
    # bisection stops once the first failing batch is within this fraction of the largest fitting one
    # (at least one batch step apart): 5% of the answer, in log2(1/0.05) ~ 4-5 probes past the doubling
    resolution: float = Field(0.05, gt=0, le=1)
    margin: float = Field(0.9, gt=0, le=1)  # recommended batch: this fraction of the largest that fit
    steps: PositiveInt = 3  # full training steps a probe runs (after one warm-up step), then an inference pass


class Suite(Strict):
    """One benchmark grid. Defaults live here, each with its reason."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # output goes to runs/<name>/
    frameworks: list[str] = Field(min_length=1)
    models: list[str] = Field(min_length=1)
    devices: list[str] = Field(["cpu"], min_length=1)  # cpu | cuda:0 | cuda:0,1 | cpu:0,1 (data parallel)
    # fp32: true IEEE fp32 in every framework | tf32: fp32 with TF32 tensor-core matmuls (NVIDIA Ampere+)
    # | fp16 (with loss scaling) | bf16 (see workers/common/precision.py)
    precisions: list[Literal["fp32", "tf32", "fp16", "bf16"]] = Field(["fp32"], min_length=1)
    batch_sizes: list[PositiveInt] = Field(min_length=1)
    epochs: PositiveInt = 1
    repeats: PositiveInt = 1  # runs of every cell, interleaved across the grid; results combine them
    # adaptive repeats: after `repeats` rounds, a cell whose throughput interval across its runs is still
    # wider than +-repeat_target (relative half-width) runs again, a round at a time, up to max_repeats
    max_repeats: PositiveInt | None = None
    repeat_target: float = Field(0.08, gt=0, lt=1)
    seed: int = Field(0, ge=0)
    # training seeds, one cell each (the initial weights, dropout, the batch order; not the data, see
    # dataset.seed): a list, or a count n for 0..n-1. Accuracy parity compares frameworks against the
    # spread over seeds (docs/measurement.md); performance verdicts read the first seed's cells
    seeds: list[int] = Field([0], min_length=1)
    dataset: DatasetConfig = DatasetConfig()
    loader: LoaderConfig = LoaderConfig()
    warmup_steps: int = Field(5, ge=0)  # first training steps kept out of steady-state throughput
    inference: InferenceConfig = InferenceConfig()
    compile: bool = False  # torch.compile / XLA jit_compile where the framework offers a choice
    # each framework's deterministic kernels (PyTorch's use_deterministic_algorithms with cuBLAS's
    # workspace setting, TensorFlow's op determinism, XLA's deterministic GPU ops); a list, such as
    # [false, true], makes it an axis whose cost the report gives as an effect, like precision's
    deterministic: list[bool] = Field([False], min_length=1)
    verify: bool = False  # run `mlbench verify` on the suite's models and frameworks before timing
    calibrate: bool = True  # measure peak matmul FLOP/s per framework, device and precision (for MFU)
    accuracy_parity_pts: PositiveFloat = 2.0  # frameworks' validation accuracies must lie within this
    target_accuracy: float | None = Field(None, gt=0, le=1)  # time to accuracy: when validation reaches this
    threads: PositiveInt | None = None  # intra-op threads per worker; None: the physical cores, in every framework
    # glibc's malloc in the workers. steady: freed memory kept for reuse (fixed mmap and trim thresholds,
    # transparent huge pages), so a training step does not page-fault its temporaries in afresh each time;
    # system: the machine's settings as they are (glibc's dynamic thresholds: tens of thousands of page
    # faults a step in a PyTorch ResNet-18 or BERT cell on a CPU, more in JAX's). See docs/measurement.md, "Host memory between steps".
    malloc: Literal["steady", "system"] = "steady"
    timeout_s: PositiveFloat = 900  # wall-clock limit per cell
    idle_timeout_s: PositiveFloat = 300  # limit without any event from the worker
    monitor_interval_s: PositiveFloat = 0.2  # outside sampling period of RSS, CPU and GPU
    model_overrides: dict[str, dict[str, Any]] = {}  # model -> spec fields, e.g. {bert: {layers: 2}}
    excludes: list[dict[str, Any]] = []  # cells matching every key of an entry are left out
    workers: dict[str, str] = {}  # framework -> module run as `python -m MODULE --cell JSON`
    # where cells run (none of these is part of a cell: a run resumes across executors)
    executor: Literal["local", "ray"] = "local"  # ray: install the `ray` extra
    parallel: PositiveInt = 1  # cells at once: local runs only cells on disjoint GPUs together; ray: tasks in flight
    ray: RayConfig = RayConfig()
    # every worker of `run` and `maxbatch` under this memory limit (its whole process tree): a memory
    # cgroup where the machine allows one, else a watchdog on the tree's RSS (the run says which);
    # over it the cell is `oom`, as on a GPU. Emulates a smaller card, and makes a CPU frontier testable.
    memory_limit_mb: PositiveFloat | None = None
    maxbatch: MaxBatchConfig = MaxBatchConfig()
    # where a step's time goes: this many extra training steps after the timed window (and after the
    # evaluation) are timed by part (forward, backward, optimizer, data); 0 leaves the breakdown out.
    # Not part of a cell: the timed figures are taken before them (workers/common/profile.py)
    profile_steps: int = Field(5, ge=0)
    # keep each cell's profiler trace of those steps in runs/<name>/profiles/ (or `run --profile`)
    profile: bool = False

    @model_validator(mode="before")
    @classmethod
    def _one_seed_key(cls, data: Any) -> Any:
        """`seed` is one training seed, `seeds` several (or a count); `seed` is then the first."""
        if not isinstance(data, dict):
            return data
        if "seeds" not in data:
            seed = data.get("seed", 0)
            ok = isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0
            return {**data, "seeds": [seed]} if ok else data  # a bad `seed` is its own error
        seeds = data["seeds"]
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            if seeds < 1:
                raise ValueError(f"seeds: a count of seeds is at least 1, not {seeds}")
            seeds = list(range(seeds))
        if isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds):
            # a stored suite holds both, agreeing; a config that names both and disagrees is refused
            if "seed" in data and data["seed"] != seeds[0]:
                raise ValueError("give `seed` (one training seed) or `seeds` (several, or a count), not both")
            data = {**data, "seeds": seeds, "seed": seeds[0]}
        return data

    @field_validator("deterministic", mode="before")
    @classmethod
    def _deterministic(cls, v: Any) -> Any:
        return [v] if isinstance(v, bool) else v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v):
            raise ValueError(f"a seed is a non-negative integer: {min(v)}")
        return cls._unique(v)

    @field_validator("frameworks", "models", "devices", "precisions", "batch_sizes", "deterministic")
    @classmethod
    def _unique(cls, v: list[Any]) -> list[Any]:
        return unique(v)

    @field_validator("models")
    @classmethod
    def _known_models(cls, v: list[str]) -> list[str]:
        for m in v:
            _check_choice(m, list(specs.MODELS), "model")
        return v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str]) -> list[str]:
        # each its ValueError says what is allowed; written as parsed (cpu:0 is cpu), so one device has one name
        out = [str(Device.parse(d)) for d in v]
        return cls._unique(out)

    @field_validator("workers")
    @classmethod
    def _modules(cls, v: dict[str, str]) -> dict[str, str]:
        for name, module in v.items():
            if not MODULE_RE.match(module):
                raise ValueError(f"workers.{name}: {module!r} is not a Python module path such as workers.my_worker")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> Suite:
        known = {**BUILTIN_WORKERS, **self.workers}
        for fw in self.frameworks:
            _check_choice(fw, list(known), "framework", hint=" (or map it to a module under `workers`)")
        for model, overrides in self.model_overrides.items():
            _check_choice(model, list(specs.MODELS), "model in model_overrides")
            for key in overrides:
                _check_choice(key, specs.override_keys(model), f"setting of {model} in model_overrides")
            try:
                spec = specs.get_spec(model, overrides)
                specs.num_parameters(spec)
            except (TypeError, ValueError, AssertionError, KeyError) as exc:
                raise ValueError(f"model_overrides.{model}: {exc}") from None
        for device in self.devices:
            n = Device.parse(device).count
            for bs in self.batch_sizes:
                if bs % n:
                    raise ValueError(
                        f"batch_sizes: {bs} does not divide over the {n} devices of {device} "
                        "(batch_size is the global batch, split evenly over the devices)"
                    )
        emulated = [e for e in self.loader.emulate_compute_s if e is not None]
        if emulated and self.dataset.format == ["memory"]:
            raise ValueError(
                "loader.emulate_compute_s: emulated compute replaces a file-fed cell's step; "
                "dataset.format lists only memory"
            )
        if "measured" in emulated and "memory" not in self.dataset.format:
            raise ValueError(
                "loader.emulate_compute_s: measured is the memory twin's step time; add memory "
                "to dataset.format (its cells run first and give it)"
            )
        if self.max_repeats is not None and (self.repeats < 2 or self.max_repeats < self.repeats):
            raise ValueError(
                f"max_repeats: {self.max_repeats} with repeats {self.repeats}: adaptive repeats need repeats of "
                "at least 2 (a spread to judge) and max_repeats of at least repeats"
            )
        for i, ex in enumerate(self.excludes):
            if not ex:
                raise ValueError(f"excludes[{i}] is empty: it would exclude every cell")
            for key in ex:
                _check_choice(key, list(EXCLUDE_KEYS), f"key of excludes[{i}]")
        return self

    def worker_module(self, framework: str) -> str:
        """The module a framework's cells run in."""
        return {**BUILTIN_WORKERS, **self.workers}[framework]


def _check_choice(value: str, allowed: list[str], what: str, hint: str = "") -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown {what} {value!r}{guess} allowed: {', '.join(allowed)}{hint}")


# --- YAML that cannot surprise: duplicate keys and object-building tags are errors -----------


class _StrictLoader(yaml.SafeLoader):
    pass


def _mapping_no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice in one mapping")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_no_duplicates)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "literal[", "list[", "dict[")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Suite
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return list(model.model_fields)


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    where = _loc(loc)
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        return f"{where}: unknown key{guess} allowed: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"{where}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    shown = err.get("input")
    got = f" (got {shown!r})" if not isinstance(shown, (dict, list)) and err["type"] != "value_error" else ""
    return f"{where}: {msg}{got}"


def _fold_misspellings(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A misspelt key leaves the key it meant missing: report the misspelling alone, as itself."""
    unknown = {tuple(e["loc"]) for e in errors if e["type"] == "extra_forbidden"}
    meant = set()
    for loc in unknown:
        close = difflib.get_close_matches(str(loc[-1]), _allowed_keys(loc), n=1)
        if close:
            meant.add((*loc[:-1], close[0]))
    return [e for e in errors if not (e["type"] == "missing" and tuple(e["loc"]) in meant)]


def parse_suite(data: Any, source: str = "<config>") -> Suite:
    """Validate a loaded mapping; raises ConfigError with one line per problem, each naming the key and
    what is allowed (unknown keys first: a misspelling often explains the rest)."""
    if data is None:
        raise ConfigError(f"{source}: the file is empty; it needs at least name, frameworks, models and batch_sizes")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, not a {type(data).__name__}")
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        errors = sorted(_fold_misspellings(exc.errors()), key=lambda e: e["type"] != "extra_forbidden")
        raise ConfigError("\n".join(f"{source}: {_describe(e)}" for e in errors)) from None


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read it ({exc})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    except yaml.constructor.ConstructorError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError(
            f"{p}: line {line}: YAML tag refused ({exc.problem}); only plain YAML values are allowed"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"{p}: {line}not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_suite(data, str(p))


# --- the command line's filters on a suite -----------------------------------------------------------

MODEL_FAMILIES = {"cnn": "resnet", "transformer": "bert", "mlp": "mlp"}  # `--models cnn`: name -> spec kind


def family_models(name: str) -> list[str]:
    """The built-in models a family name stands for (cnn: the ResNets); [] for a name that is none."""
    kind = MODEL_FAMILIES.get(name)
    return [m for m, spec in specs.MODELS.items() if kind is not None and spec().kind == kind]


def _models_of(suite: Suite, wanted: list[str]) -> list[str]:
    out: list[str] = []
    for name in wanted:
        family = [m for m in family_models(name) if m in suite.models]
        if name in suite.models or not family_models(name):
            out.append(name)  # a model, or neither: cells.expand says whether the grid holds it
        elif family:
            out += family
        else:
            raise ConfigError(
                f"--models: {name!r} ({', '.join(family_models(name))}) is not in this suite's grid; "
                f"allowed: {', '.join(suite.models)}"
            )
    return list(dict.fromkeys(out))


def apply_filters(
    suite: Suite, only: dict[str, list[Any]], source: str = "<config>"
) -> tuple[Suite, dict[str, list[Any]], list[str]]:
    """The command line's filters on a suite: a model family (cnn, transformer, mlp) stands for the suite's
    models of that kind; devices the suite does not list replace its devices (the suite runs on them);
    every other filter only narrows (cells.expand checks it). Returns the suite, the filters left to
    narrow with, and what to tell the user."""
    only = {**only, "model": _models_of(suite, list(only.get("model") or []))}
    try:
        wanted = list(dict.fromkeys(str(Device.parse(d)) for d in only.get("device") or []))
    except ValueError as exc:
        raise ConfigError(f"--devices: {exc}") from None
    lacking = [d for d in wanted if d not in suite.devices]
    if not lacking:
        return suite, only, []
    replaced = parse_suite({**suite.model_dump(), "devices": wanted}, f"{source} (with --devices)")
    note = (
        f"--devices {' '.join(lacking)}: this suite lists {', '.join(suite.devices)}; "
        f"running this suite on {', '.join(wanted)} instead"
    )
    return replaced, {**only, "device": []}, [note]
