"""`mlbench import-dlio WORKLOAD.yaml`: a DLIO workload file (argonne-lcf/dlio_benchmark's Hydra YAML,
the format MLPerf Storage's workloads are written in) as an mlbench suite.

The dataset, reader, train and metric sections map onto `dataset`, `loader`, `batch_sizes`, `epochs`,
`seed` and `loader.emulate_compute_s`; every key with no counterpart is named in the notes, never
dropped in silence. The suite runs each cell twice where mlbench builds the workload's model (or
the one `--model` names): with the real training step, and with DLIO's emulated compute (a sleep of
`train.computation_time` a step), so the emulation is checked against the real thing; a workload
whose model mlbench does not build runs with emulated compute only, and says so.

A record on disk is the workload's size, `record_length_bytes` with its stdev (`dataset.record_bytes`):
mlbench's sample (images: CIFAR's 3,073 bytes) padded with ballast every loader reads and discards,
in npz, tfrecord and hdf5; DLIO's indexed_binary (raw: the model's fixed layout) and image files
keep mlbench's own records, and the import says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlbench.config import ConfigError, parse_suite
from workers.common import specs
from workers.common.datapath.formats import BALLAST_FORMATS

# DLIO model names with an mlbench model of the same kind (the nearest ResNet for ResNet-50)
MODELS = {"resnet50": "resnet34", "resnet": "resnet34", "resnet18": "resnet18", "resnet34": "resnet34", "bert": "bert"}
FORMATS = {
    "npz": "npz",
    "tfrecord": "tfrecord",
    "hdf5": "hdf5",
    "indexed_binary": "raw",
    "mmap_indexed_binary": "raw",
    "jpeg": "imagefolder",  # DLIO's a file per sample: an image folder of that codec
    "png": "imagefolder",
}
LOADERS = {"pytorch": ("pytorch", "native"), "tensorflow": ("tensorflow", "native")}
RECORD_BYTES = {"image": 3073}  # a raw record of each family: label byte + CHW pixels
MAPPED = {
    "model": {"name"},
    "framework": set(),
    "dataset": {
        "format",
        "num_files_train",
        "num_samples_per_file",
        "num_files_eval",
        "record_length_bytes",
        "record_length_bytes_stdev",
    },
    "reader": {
        "data_loader",
        "batch_size",
        "read_threads",
        "prefetch_size",
        "pin_memory",
        "file_shuffle",
        "sample_shuffle",
    },
    "train": {"epochs", "computation_time", "seed"},
    "metric": {"au"},
}


def _mean(value: Any) -> float | None:
    if isinstance(value, dict):  # DLIO's distribution form: {mean, stdev, type}
        value = value.get("mean")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def import_workload(path: Path, model: str | None = None, name: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """(suite mapping, notes): the suite mlbench runs for a DLIO workload file, and what did not map."""
    try:
        w = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not a readable DLIO workload file ({exc})") from None
    if not isinstance(w, dict):
        raise ConfigError(f"{path}: a DLIO workload file is a mapping of sections (model, dataset, reader, train)")
    notes: list[str] = []
    for section, body in w.items():
        known = MAPPED.get(section)
        if known is None:
            notes.append(f"{section}: no counterpart in mlbench (not imported)")
            continue
        if isinstance(body, dict):
            for key in body:
                if key not in known:
                    notes.append(f"{section}.{key}: no counterpart in mlbench (not imported)")
    dataset, reader, train = (w.get(k) or {} for k in ("dataset", "reader", "train"))
    framework = w.get("framework") or reader.get("data_loader") or "pytorch"
    if framework not in LOADERS:
        raise ConfigError(f"{path}: framework {framework!r}: mlbench imports pytorch or tensorflow workloads")
    fw, kind = LOADERS[framework]
    notes.append(f"framework {framework}: add jax to frameworks to see Grain too (DLIO has no JAX)")
    loader_name = reader.get("data_loader", framework)
    if loader_name not in ("pytorch", "tensorflow"):
        notes.append(f"reader.data_loader {loader_name}: no counterpart; {fw}'s own loader is used")
    dlio_model = str((w.get("model") or {}).get("name", "")).lower()
    real = model or MODELS.get(dlio_model)
    if model and model not in specs.MODELS:
        raise ConfigError(f"--model: unknown model {model!r}; allowed: {', '.join(specs.MODELS)}")
    if real is None:
        notes.append(
            f"model {dlio_model or '(none)'}: mlbench builds no counterpart; the cells run with emulated compute "
            "only, reading mlbench's image records (give --model to train one of mlbench's models beside them)"
        )
    elif real != dlio_model:
        notes.append(
            f"model {dlio_model or '(none)'}: mlbench trains {real} in the real-compute cells (not the same model)"
        )
    carrier = real or "resnet18"
    fmt = FORMATS.get(str(dataset.get("format", "tfrecord")))
    if fmt is None:
        raise ConfigError(
            f"{path}: dataset.format {dataset.get('format')!r}: mlbench reads {', '.join(sorted(FORMATS))}"
        )
    files = int(dataset.get("num_files_train", 1))
    per_file = int(dataset.get("num_samples_per_file", 1))
    family = specs.get_spec(carrier).family
    record, spread = dataset.get("record_length_bytes"), dataset.get("record_length_bytes_stdev")
    sized: dict[str, Any] = {}
    if record is not None and fmt in BALLAST_FORMATS:
        sized = {"record_bytes": int(record), **({"record_bytes_stdev": int(spread)} if spread else {})}
        own = RECORD_BYTES.get(family)
        notes.append(
            f"dataset.record_length_bytes {record}"
            + (f" +- {spread}" if spread else "")
            + f": each record padded to that size with ballast the loader reads and discards; the model trains "
            f"on mlbench's {family} samples ({own or 'their own size'} bytes"
            + ("; a size below that pads nothing)" if own and record - 2 * (spread or 0) < own else ")")
        )
    elif record is not None:
        notes.append(
            f"dataset.record_length_bytes {record}" + (f" +- {spread}" if spread else "") + f": {fmt} records "
            f"take no ballast, so mlbench's {family} records are its own "
            f"({RECORD_BYTES.get(family, 'another size')} bytes as raw), not the workload's"
        )
    val = int(dataset.get("num_files_eval", 0)) * per_file or 256
    compute = _mean(train.get("computation_time"))
    if compute is None:
        notes.append("train.computation_time: none given; only the real step is run")
    emulate: list[Any] = ([None] if real else []) + ([compute] if compute else [])
    if not emulate:
        raise ConfigError(f"{path}: neither a model mlbench builds nor train.computation_time to emulate")
    shuffled = {str(reader.get(k, "off")) for k in ("file_shuffle", "sample_shuffle")} != {"off"}
    if not shuffled:
        notes.append("reader.file_shuffle/sample_shuffle off: mlbench's order is always a seeded shuffle (two_level)")
    suite = {
        "name": name or f"dlio-{Path(path).stem}".replace("_", "-"),
        "frameworks": [fw],
        "models": [carrier],
        "devices": ["cpu"],
        "batch_sizes": [int(reader.get("batch_size", 1))],
        "epochs": int(train.get("epochs", 1)),
        "seed": int(train.get("seed", 0)),
        "dataset": {
            "name": "synthetic",
            "train_samples": files * per_file,
            "val_samples": val,
            "format": ["memory", fmt] if real else [fmt],
            "shards": files,
            "order": "two_level",
            **({"image_codec": str(dataset["format"])} if fmt == "imagefolder" else {}),
            **sized,
        },
        "loader": {
            "kind": [kind],
            "workers": [int(reader.get("read_threads", 1))],
            "prefetch": int(reader.get("prefetch_size", 2)),
            "pin_memory": bool(reader.get("pin_memory", True)),
            "emulate_compute_s": emulate,
            "au_threshold": float((w.get("metric") or {}).get("au", 0.90)),
        },
        "calibrate": False,
    }
    if real is None:
        suite["inference"] = {"warmup": 0, "runs": 1, "min_runs": 1, "max_s": 1}
    notes.append("devices: cpu; computation_time was measured on the workload's accelerator: set devices to match")
    parse_suite(suite, f"{path} (imported)")  # the mapping is a valid suite, or a ConfigError here
    return suite, notes
