"""The results schema: every column of a cell file, its Arrow type and what it means.

The single source for the Parquet files, the CSV/JSON exports and docs/results.md's column table
(`python -m mlbench schema` prints it; a test keeps docs/results.md in step).
"""

from __future__ import annotations

import re

import pyarrow as pa

S, I, F, B = pa.string(), pa.int64(), pa.float64(), pa.bool_()
EPOCH = pa.struct(
    [
        ("epoch", I),
        ("train_loss", F),
        ("train_accuracy", F),
        ("val_loss", F),
        ("val_accuracy", F),
        ("train_s", F),
        ("eval_s", F),
        ("samples", I),
        ("samples_per_second", F),
        ("data_wait_s", F),
    ]
)

# (name, type, meaning). Units are in the names; figures nothing measured are null, never 0.
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("cell_id", S, "short hash of the cell's canonical spec: the same spec always has the same id"),
    ("run_name", S, "the suite's `name` (the folder under runs/)"),
    ("framework", S, "pytorch, tensorflow, jax, or a framework added under `workers`"),
    ("model_name", S, "mlp, resnet18, resnet34 or bert"),
    (
        "device",
        S,
        "cpu, cuda:N, or cuda:N,M / cpu:0,1 for data parallel over those GPUs / CPU replicas (physical GPU indices)",
    ),
    ("precision", S, "fp32, fp16 or bf16 (mixed precision with fp32 master weights)"),
    ("batch_size", I, "training batch size: the global batch, split evenly over the devices"),
    ("num_devices", I, "devices (replicas) the cell trained on: 1, or the data-parallel device count"),
    ("per_device_batch_size", I, "batch_size / num_devices: what each replica trains on per step"),
    ("epochs", I, "training epochs asked for"),
    (
        "seed",
        I,
        "training seed: the initial weights, dropout and the batch order (the data too unless dataset.seed is set apart)",
    ),
    ("dataset", S, "synthetic or cifar10"),
    ("train_samples", I, "training samples in the dataset the worker read"),
    ("val_samples", I, "validation samples"),
    ("compile", B, "whether the framework's compiler was asked for"),
    (
        "deterministic",
        B,
        "whether the framework's deterministic kernels were asked for (the suite's `deterministic`; "
        "docs/measurement.md)",
    ),
    ("worker_module", S, "the module the cell ran in (`python -m MODULE --cell JSON`)"),
    ("spec_json", S, "the cell's canonical spec as JSON (what cell_id hashes)"),
    ("repeat", I, "which run of the cell this row is (0-based; in results.parquet, the first one combined)"),
    ("repeats", I, "runs of the cell combined in this row (repeats.parquet keeps each)"),
    ("repeat_samples_per_second", pa.list_(F), "throughput of each combined run"),
    ("repeats_cv", F, "coefficient of variation of throughput across the combined runs"),
    ("repeats_latency_cv", F, "coefficient of variation of the inference p50 latency across the combined runs"),
    ("repeats_b1_latency_cv", F, "coefficient of variation of the batch-1 p50 latency across the combined runs"),
    (
        "ci_kind",
        S,
        "what the row's intervals cover: `runs` (the t-interval of the mean over its repeats, independent "
        "processes: what a rerun would give) or `within_run` (one process's samples: narrower than a rerun moves)",
    ),
    ("repeat_b1_latency_p50_ms", pa.list_(F), "batch-1 p50 latency of each combined run (one a process)"),
    ("status", S, "ok, failed, oom, timeout, crashed or skipped"),
    ("reason", S, "one line saying why, for every status but ok"),
    ("exit_code", I, "the worker's exit status (negative: the signal that ended it)"),
    ("duration_s", F, "wall time of the cell through the orchestrator, start to stored"),
    ("started_at", S, "UTC time the worker was started (ISO 8601)"),
    ("stderr_tail", S, "the last lines of the worker's stderr (the whole log is in runs/<run>/logs/)"),
    ("log_lines", S, "log events and non-event stdout lines of the worker, head and tail, as JSON"),
    ("num_parameters", I, "trainable parameters, as the framework counts them (equal to the spec's)"),
    ("parameter_bytes", I, "bytes of the trainable parameters in fp32"),
    ("model_size_mb", F, "size on disk of the model saved in the framework's native format (MiB)"),
    ("model_save_s", F, "time to save the model in the native format"),
    ("model_load_s", F, "time to load the saved model back (native format)"),
    ("train_time_per_epoch", F, "mean wall time of one training epoch (s), warm-up included, evaluation excluded"),
    ("total_train_time", F, "wall time of all training epochs (s), warm-up included, evaluation excluded"),
    (
        "samples_per_second",
        F,
        "steady-state training throughput: timed samples over the wall time of the timed steps (repeats: the "
        "mean of the runs')",
    ),
    (
        "samples_per_second_ci_low",
        F,
        "lower end of samples_per_second's 95% CI: across the runs (t-interval, ci_kind runs), else batch means "
        "of one run's timed steps (ci_kind within_run)",
    ),
    ("samples_per_second_ci_high", F, "upper end of samples_per_second's 95% CI (as the lower end)"),
    (
        "samples_per_second_per_device",
        F,
        "samples_per_second / num_devices (samples_per_second is the global batch over the slowest replica's step)",
    ),
    (
        "scaling_efficiency",
        F,
        "samples_per_second / (num_devices x samples_per_second of the one-device cell of the same framework, "
        "model, precision and host at this cell's per_device_batch_size); 1 = linear (rebuilt; null without one)",
    ),
    ("scaling_efficiency_low", F, "scaling_efficiency's lower bound from the two throughputs' 95% CIs (rebuilt)"),
    ("scaling_efficiency_high", F, "scaling_efficiency's upper bound from the two throughputs' 95% CIs (rebuilt)"),
    (
        "collective",
        S,
        "how a data-parallel cell's replicas all-reduce (e.g. DistributedDataParallel over nccl / gloo, "
        "MirroredStrategy's NcclAllReduce, XLA all-reduce); null on one device",
    ),
    (
        "batchnorm",
        S,
        "a data-parallel cell's BatchNorm statistics: sync (over the global batch, in every framework) and how; "
        "null on one device",
    ),
    ("step_time_median_s", F, "median wall time of a timed training step (data preparation included)"),
    ("step_time_mean_s", F, "mean of the timed training steps"),
    ("step_time_min_s", F, "fastest timed training step"),
    ("step_time_max_s", F, "slowest timed training step"),
    ("step_time_cv", F, "coefficient of variation of the timed steps (std / mean): one pause can dominate it"),
    ("step_time_robust_cv", F, "robust coefficient of variation of the timed steps (1.4826 x MAD / median)"),
    ("step_time_outliers", I, "timed steps flagged by the modified Z-score (> 3.5) on the MAD"),
    ("gc_pause_s", F, "Python garbage collection inside the timed steps (s); null where the worker did not count it"),
    ("gc_steps", I, "timed steps that a garbage collection paused"),
    ("step_outliers_with_gc", I, "outlier steps with a garbage collection inside them: a spike named, not guessed"),
    ("steps_timed", I, "training steps after warm-up that the figures above come from"),
    ("warmup_steps_detected", I, "steps before the steady state, detected from the samples (at least warmup_steps)"),
    (
        "steady_dropped_steps",
        I,
        "steps after the configured warm-up that steady-state detection dropped as a slow prefix (at most a "
        "quarter of them)",
    ),
    ("steady_capped", B, "true where the slow prefix was longer than the cap: the window still holds warm-up"),
    (
        "noisy",
        B,
        "true where the timed steps' robust CV (or, with repeats, the runs' CV) is above 10%: a single run then "
        "needs a gap widened by twice its robust CV to be ranked",
    ),
    (
        "page_faults_per_step",
        F,
        "minor page faults of the worker per timed step: memory mapped in afresh (see the malloc setting)",
    ),
    ("first_step_s", F, "wall time of the first training step (tracing, compilation, autotuning)"),
    ("compile_time_s", F, "first step minus the median timed step: tracing/compilation/autotuning cost"),
    ("warmup_time_s", F, "wall time of all steps before the steady state"),
    ("data_wait_s", F, "time spent preparing host batches during training, all epochs"),
    # the data path (workers/common/datapath/; docs/measurement.md, "The data path")
    (
        "data_format",
        S,
        "where training batches came from: memory (gathered in host memory) or raw, npz, tfrecord, hdf5 files",
    ),
    ("loader", S, "what loaded them: memory, or torch (DataLoader), tfdata (tf.data), grain"),
    ("loader_workers", I, "the loader's worker processes (torch, Grain) or parallel calls (tf.data); null for memory"),
    (
        "loader_device_prefetch",
        I,
        "batches placed on the device ahead of their step (loader.device_prefetch; 0: copied as the step starts)",
    ),
    ("data_shards", I, "files the training set was split into (the two_level order's shards, for memory too)"),
    ("data_order", S, "global (one permutation per epoch) or two_level (shards, then records within each)"),
    (
        "data_augment",
        S,
        "none or crop_flip (its parameters a hash of seed, epoch and sample: the same in every loader)",
    ),
    (
        "batch_digests",
        pa.list_(S),
        "sha256 (16 hex digits) of each of the first training batches, uint8 NCHW and labels",
    ),
    (
        "digests_agree",
        B,
        "whether batch_digests equal those of every cell of the run that reads the same batches (model, data, "
        "batch, seed, order, augmentation; rebuilt; null where no other cell does)",
    ),
    ("digest_mismatch", S, "the first batch whose digest differs, and the cell it differs from (rebuilt)"),
    (
        "loader_samples_per_second",
        F,
        "the loader alone over one epoch of the same batches, no step, after its first batch: samples/s",
    ),
    ("loader_mb_per_second", F, "the same, in MB/s of records read (records x record bytes)"),
    (
        "data_record_bytes",
        F,
        "a training record's bytes on disk on average, as written: label and sample, and the ballast that "
        "dataset.record_bytes pads it with (a workload's own record size); null for memory",
    ),
    ("data_record_bytes_stdev", F, "their standard deviation over the training set, as written (0: all one size)"),
    ("image_codec", S, "imagefolder or JPEG shards: the images' codec, jpeg (lossy) or png (lossless)"),
    (
        "image_size",
        I,
        "encoded images stored at this side in pixels, resized and centre-cropped to the model's input by each "
        "loader; null: stored at the model's size",
    ),
    (
        "image_decoder",
        S,
        "imagefolder: what decoded the files, pillow (DataLoader and Grain workers, or loader.decoder: pillow) or "
        "tf.io.decode_image (tf.data)",
    ),
    (
        "decode_max_abs_diff",
        I,
        "imagefolder: the largest difference, in pixel levels, between this loader's decoded batches and the same "
        "files decoded by Pillow, over the digested batches (0: the same bytes)",
    ),
    (
        "image_decode_cost",
        F,
        "imagefolder: 1 - its loader-alone samples/s over the raw cell's with the same loader, workers and shards "
        "(the same pixels as records): what opening a file per sample and decoding it costs the loader (rebuilt; "
        "null without such a raw cell)",
    ),
    (
        "data_storage",
        S,
        "where a file-fed cell's shards came from: local (a disk), stream (object storage, each batch's records "
        "fetched as the loader reads them) or cache (object storage copied to the run's local cache first)",
    ),
    ("data_uri", S, "the object-storage URI of the shard folder (no user or password in it); null for local shards"),
    (
        "storage_read_mb",
        F,
        "MB fetched from object storage over the cell, by every process (loader workers too): streamed byte ranges "
        "and whole objects, or the cache's copy (0 on a cache hit)",
    ),
    ("storage_requests", I, "requests made to object storage for those bytes (a coalesced byte range is one)"),
    (
        "storage_read_mb_per_second",
        F,
        "read throughput from object storage: the cache's copy over its time, or (stream) the MB the loader-alone "
        "epoch fetched over its time",
    ),
    ("storage_fetch_s", F, "the time to copy the shard folder into the local cache (cache, on a miss)"),
    ("storage_cache_hit", B, "the shard folder was in the local cache already (cache): nothing fetched"),
    ("time_to_first_batch_s", F, "from asking the loader for an epoch (worker start-up included) to its first batch"),
    ("data_wait_p50_s", F, "median wait of a steady timed step for its batch (the feed's next())"),
    ("data_wait_p99_s", F, "99th percentile of that wait"),
    (
        "data_wait_share",
        F,
        "1 - accelerator_utilisation: the share of the steady steps' time the device waited for data",
    ),
    (
        "accelerator_utilisation",
        F,
        "DLIO's AU: the steady timed steps' compute over their wall time (wall minus data wait, or from the memory "
        "twin where waits overlap the device's work: see au_source); 1 = never waited",
    ),
    (
        "accelerator_utilisation_ci_low",
        F,
        "the 95% interval of AU a rerun would give: across the runs (repeats, au_source waits), or from the "
        "throughput ratio's over the memory twin (au_source memory twin; rebuilt); null from one run",
    ),
    ("accelerator_utilisation_ci_high", F, "its upper end (rebuilt)"),
    (
        "au_source",
        S,
        "what AU is made of: waits (each steady step's wait is device idle time: the step ran after it) or memory "
        "twin (the backend queues steps, so a wait overlaps the previous step's device work: AU = the twin's "
        "median step over this cell's, at most 1; rebuilt)",
    ),
    (
        "waits_overlap_steps",
        B,
        "the backend queues steps (JAX; PyTorch and TensorFlow on a GPU): a wait for the next batch overlaps "
        "the device's work on the last",
    ),
    (
        "au_pass",
        B,
        "AU against the suite's loader.au_threshold (DLIO: 0.90) beyond what a rerun moves: true at or above it "
        "(the interval's low end, or one run's AU less the single-run floor), false below it; null where the "
        "evidence cannot tell (au_pass_reason) (rebuilt)",
    ),
    ("au_pass_reason", S, "why au_pass is null although AU was measured (rebuilt)"),
    ("input_ready", B, "the median data wait is at most 50 us: tf.data's test for 'input is not the bottleneck'"),
    (
        "emulated_compute_s",
        F,
        "DLIO's emulated compute: the sleep that replaced each training step (loader.emulate_compute_s; "
        "nothing trained, no model figure); null: the real step",
    ),
    (
        "page_cache",
        S,
        "the page cache for the files read: warm (left as the last read left it), cold (loader.page_cache: "
        "dropped with posix_fadvise before the loader-alone epoch and each training epoch) or none (streamed "
        "from object storage)",
    ),
    (
        "data_tax",
        F,
        "1 - samples_per_second / that of this cell's memory twin (same framework, model, device, precision, "
        "batch, order, augmentation): the throughput the loader costs (rebuilt; null without a twin, see data_tax_reason)",
    ),
    ("data_tax_low", F, "data_tax's lower bound from the two throughputs' 95% CIs (rebuilt)"),
    ("data_tax_high", F, "data_tax's upper bound from the two throughputs' 95% CIs (rebuilt)"),
    (
        "data_tax_clear",
        B,
        "whether the cell and its memory twin differ in throughput beyond the evidence rule every comparison "
        "follows (the ratio's between-run interval, or a single run's rerun floor); false: cannot tell (rebuilt)",
    ),
    ("data_tax_reason", S, "why data_tax is missing, or cannot be told from the noise (rebuilt)"),
    ("final_train_loss", F, "mean training loss over the last epoch"),
    ("final_train_accuracy", F, "training accuracy over the last epoch (running, in training mode)"),
    ("final_val_loss", F, "validation loss after the last epoch"),
    ("final_val_accuracy", F, "validation accuracy after the last epoch"),
    (
        "val_correct_bits",
        S,
        "which validation samples the trained model got right, in stored order (numpy packbits, base64): "
        "the paired accuracy verdict's input",
    ),
    (
        "time_to_target_s",
        F,
        "training plus evaluation time until validation accuracy first reached target_accuracy (s)",
    ),
    (
        "epochs_to_target",
        I,
        "epochs until validation accuracy first reached target_accuracy (null: not reached or not set)",
    ),
    (
        "train_flops_per_sample",
        I,
        "FLOPs of one sample's training step, from the shared spec (3x forward; "
        "matmuls and convolutions, multiply-add = 2)",
    ),
    ("inference_flops_per_sample", I, "FLOPs of one sample's forward pass, from the shared spec"),
    ("achieved_tflops", F, "samples_per_second x train_flops_per_sample, in TFLOP/s"),
    (
        "peak_tflops",
        F,
        "peak matmul TFLOP/s measured on this device and precision by the calibration cells, "
        "highest framework (rebuilt; see calibration.json)",
    ),
    ("mfu_low", F, "MFU over the calibration's best run (its lowest reading; rebuilt)"),
    ("mfu_high", F, "MFU over the calibration's worst run (its highest reading; rebuilt)"),
    (
        "calibration_other_pct",
        F,
        "other processes' CPU during the calibration behind peak_tflops (% of one core) (rebuilt)",
    ),
    (
        "peak_tflops_earlier",
        F,
        "the peak the same calibration measured last under this runs root (calibration-history.jsonl): MFU "
        "across runs compares only where the peak held (rebuilt)",
    ),
    ("mfu", F, "model FLOPs utilisation: achieved_tflops / peak_tflops (rebuilt)"),
    (
        "inference_batch_size",
        I,
        "batch size of the latency figures: batch_size, or per_device_batch_size on one replica of a "
        "data-parallel cell",
    ),
    ("inference_runs", I, "timed inference forward passes behind the latency figures"),
    ("inference_latency_mean_ms", F, "mean latency of an inference forward pass, input copy included (ms)"),
    ("inference_latency_p50_ms", F, "median inference latency (ms)"),
    ("inference_latency_p95_ms", F, "95th percentile inference latency (ms)"),
    ("inference_latency_p99_ms", F, "99th percentile inference latency (ms)"),
    ("inference_b1_runs", I, "timed inference passes at batch size 1"),
    ("inference_b1_latency_mean_ms", F, "mean latency of one sample's forward pass (batch 1) (ms)"),
    ("inference_b1_latency_p50_ms", F, "median latency at batch 1 (ms; repeats: the mean of the runs' medians)"),
    (
        "inference_b1_latency_p50_ci_low_ms",
        F,
        "lower end of the batch-1 p50's 95% CI: across the runs (ci_kind runs), else order statistics of one "
        "run's passes",
    ),
    ("inference_b1_latency_p50_ci_high_ms", F, "upper end of the batch-1 p50's 95% CI (as the lower end)"),
    ("inference_b1_latency_robust_cv", F, "robust CV of the batch-1 passes (the latency's own spread)"),
    ("inference_b1_outliers", I, "batch-1 passes flagged by the modified Z-score (> 3.5) on the MAD"),
    ("inference_b1_latency_p95_ms", F, "95th percentile latency at batch 1 (ms)"),
    ("inference_b1_latency_p99_ms", F, "99th percentile latency at batch 1 (ms)"),
    (
        "peak_memory_mb",
        F,
        "peak memory of the cell (MiB), from the same source as avg_memory_mb (memory_source): on GPU NVML's "
        "device memory of the worker's processes (CUDA context included; the whole device's where NVML "
        "cannot list processes), on CPU the larger of the sampled process-tree RSS peak and the worker's "
        "own maximum RSS",
    ),
    (
        "avg_memory_mb",
        F,
        "average memory (MiB), the same source as peak_memory_mb: on GPU NVML (the worker's processes, from "
        "their CUDA initialisation on), on CPU the process-tree RSS",
    ),
    ("memory_source", S, "what peak_memory_mb and avg_memory_mb measure for this cell"),
    ("host_rss_peak_mb", F, "peak RSS of the worker's process tree, sampled from outside (MiB)"),
    ("host_rss_avg_mb", F, "average RSS of the worker's process tree, sampled from outside (MiB)"),
    ("worker_max_rss_mb", F, "the worker process's own maximum RSS (getrusage) (MiB)"),
    ("step_forward_s", F, "a training step's forward pass and loss, seconds (profiled steps after the timed window)"),
    (
        "step_backward_s",
        F,
        "the step's backward pass, s (JAX, TensorFlow: forward+backward minus the forward timed alone)",
    ),
    ("step_optimizer_s", F, "the step's optimizer update (loss scaling, schedule), s"),
    ("step_data_s", F, "the step's batch: its host preparation and its copy to the device, s"),
    (
        "step_other_s",
        F,
        "the profiled step's wall time beyond the four parts (Python, dispatch, launch gaps, read-back), s",
    ),
    (
        "step_profiled_s",
        F,
        "the profiled steps' mean wall time, which the five parts add up to; above step_time_median_s by "
        "what the split costs (a sync after each part; XLA: parts compiled apart)",
    ),
    ("profile_steps", I, "how many steps the step-time breakdown averages"),
    ("profile_trace", S, "the cell's profiler trace, relative to the run folder (profile: true)"),
    ("profile_skipped", S, "why the cell has no step-time breakdown (a data-parallel cell)"),
    ("memory_params_mb", F, "parameters, fp32 (computed from the spec: the same in every framework) (MiB)"),
    ("memory_grads_mb", F, "gradients, fp32 (computed) (MiB)"),
    ("memory_optimizer_mb", F, "optimizer state: SGD momentum 1x, AdamW 2x the parameters (computed) (MiB)"),
    (
        "memory_activations_mb",
        F,
        "activations and workspace: the peak beyond parameters, gradients and optimizer state (GPU: the "
        "allocator's peak; CPU: the worker's peak RSS beyond the process before the model and the data copy) (MiB)",
    ),
    ("bottleneck", S, "input, host, memory, compute or none (mlbench/analysis/bottleneck.py: THRESHOLDS) (rebuilt)"),
    ("bottleneck_evidence", S, "the figures the bottleneck verdict rests on (rebuilt)"),
    ("device_peak_allocated_mb", F, "the framework allocator's peak device allocation (MiB)"),
    (
        "device_reserved_peak_mb",
        F,
        "the framework allocator's peak pool, reserved from the device (MiB; PyTorch, JAX; TensorFlow reports none)",
    ),
    (
        "gpu_memory_outside_allocator_mb",
        F,
        "device memory of the worker's processes beyond the allocator's pool at its peak: the CUDA context, "
        "cuBLAS/cuDNN workspaces, kernels (MiB; against the allocated peak where no pool is reported)",
    ),
    ("cpu_util_avg_pct", F, "average CPU use of the process tree (100 = one core busy)"),
    (
        "child_cpu_avg_pct",
        F,
        "average CPU use of the worker's child processes alone (a data loader's workers, other ranks; 100 = one core)",
    ),
    (
        "tree_pss_peak_mb",
        F,
        "peak proportional set size of the process tree, read once a second: pages shared between a worker and "
        "its loader processes counted once, split between them (MiB)",
    ),
    ("dev_shm_peak_mb", F, "peak growth of /dev/shm over the cell (machine-wide; a loader's shared batches) (MiB)"),
    (
        "read_chars_mb",
        F,
        "bytes the process tree read (rchar: page cache included; the last count seen of each process) (MiB)",
    ),
    ("read_disk_mb", F, "of those, bytes that reached the storage device (read_bytes; 0 from a warm page cache) (MiB)"),
    (
        "cpu_other_train_pct",
        F,
        "CPU other processes used during the timed training steps alone (% of one core; the orchestrator's own "
        "apart): the load that competed with the steps",
    ),
    ("cpu_orchestrator_train_pct", F, "the orchestrator's own CPU during the timed training steps (% of one core)"),
    ("cpu_other_inference_pct", F, "CPU other processes used during the timed inference passes (% of one core)"),
    (
        "cpu_other_pct",
        F,
        "CPU the rest of the machine used while the cell ran (100 = one core): other load skews figures",
    ),
    ("gpu_utilization_pct", F, "average GPU utilisation sampled by NVML (%); null where nothing measured it"),
    ("gpu_utilization_peak_pct", F, "peak sampled GPU utilisation (%)"),
    ("gpu_memory_used_peak_mb", F, "peak device memory in use (NVML, whole device) (MiB)"),
    ("gpu_memory_used_avg_mb", F, "average device memory in use (NVML, whole device) (MiB)"),
    ("gpu_process_memory_peak_mb", F, "peak device memory of the worker's processes (NVML per process) (MiB)"),
    (
        "gpu_process_memory_avg_mb",
        F,
        "average device memory of the worker's processes (NVML per process, from their CUDA init on) (MiB)",
    ),
    ("gpu_power_avg_w", F, "average board power (NVML) (W)"),
    ("gpu_energy_j", F, "energy from the device's total-energy counter over the cell (J)"),
    ("gpu_utilization_train_pct", F, "average GPU utilisation (NVML) over the timed training steps (%)"),
    ("gpu_power_train_avg_w", F, "average board power (NVML) over the timed training steps (W)"),
    ("gpu_energy_train_j", F, "energy from the device's total-energy counter over the timed training steps (J)"),
    ("gpu_sm_clock_max_mhz", F, "highest SM clock NVML saw during the cell (MHz)"),
    (
        "gpu_throttle_reasons",
        S,
        "why NVML saw the clocks held back during the cell (power cap, thermal, ...; empty: never; idle not counted)",
    ),
    ("monitor_samples", I, "outside monitor samples taken during the cell"),
    ("gpu_memory_before_mb", F, "device memory in use on the cell's GPUs just before it started (NVML) (MiB)"),
    ("gpu_memory_after_mb", F, "device memory in use on the cell's GPUs after its processes ended (NVML) (MiB)"),
    ("gpu_foreign_processes", S, "other processes found holding the cell's GPUs before it started (JSON), not killed"),
    ("framework_version", S, "version of the framework the worker imported"),
    ("cuda_version", S, "CUDA version the framework was built with"),
    ("cudnn_version", S, "cuDNN version the framework reports"),
    ("devices_seen", S, "devices the framework saw (JSON list)"),
    ("threads_json", S, "thread settings the worker reported (JSON)"),
    ("precision_mode", S, "how the framework ran the precision (e.g. autocast fp16 + GradScaler)"),
    (
        "matmul_precision",
        S,
        "how the worker ran fp32 matmuls and convolutions: ieee (true fp32, set explicitly in every framework) or tf32",
    ),
    ("compiler", S, "compiler used, or null"),
    ("determinism", S, "the deterministic-kernel settings the framework reports in the worker (`deterministic`)"),
    ("python_version", S, "Python of the orchestrator and workers"),
    ("os", S, "operating system and kernel"),
    ("cpu_model", S, "CPU model name"),
    ("cpu_count_logical", I, "logical CPUs"),
    ("cpu_count_physical", I, "physical cores"),
    ("memory_total_gb", F, "host memory (GiB)"),
    ("gpu_model", S, "GPU model(s) of the cell's device, from NVML"),
    ("gpu_driver", S, "NVIDIA driver version"),
    ("hostname", S, "machine the cell ran on"),
    ("memory_limit_mb", F, "the suite's memory_limit_mb the worker's process tree ran under (null: none)"),
    ("memory_limit_how", S, "how that limit was enforced: a memory cgroup, or an RSS watchdog (null: none)"),
    ("ray_node_id", S, "the Ray node that ran the cell (nodes on one machine share a hostname); null: not on Ray"),
    ("executor", S, "what ran the cell: local (this machine) or ray (a task on a Ray cluster's node)"),
    ("env_flags", S, "allocator, thread and cache environment variables given to the worker (JSON)"),
    ("mlbench_version", S, "mlbench version"),
    (
        "verify_passed",
        B,
        "whether `mlbench verify` found this model identical across the frameworks (rebuilt; null: not run)",
    ),
    ("verify_detail", S, "verify's one-line verdict for this model (rebuilt)"),
    (
        "accuracy_spread_pts",
        F,
        "max minus min final validation accuracy (points) across frameworks for the same "
        "model, device, precision and batch size (rebuilt; null with fewer than two)",
    ),
    (
        "accuracy_parity",
        B,
        "true where accuracy_parity_verdict is equivalent, false where different, null otherwise (rebuilt)",
    ),
    (
        "accuracy_parity_verdict",
        S,
        "equivalent / different / unresolved: every pair of frameworks' accuracy difference (95% interval: "
        "the same validation samples paired, and over seeds the seeds' spread) against the suite's "
        "accuracy_parity_pts; untrained: every framework's validation loss still near a uniform guess's; "
        "not_converged: a learning curve still moving (convergence_evidence); neither judged (rebuilt)",
    ),
    ("accuracy_pair", S, "the two frameworks whose difference decided the verdict, as 'a vs b' (rebuilt)"),
    ("accuracy_diff_pts", F, "that pair's accuracy difference, a minus b (points; mean over seeds) (rebuilt)"),
    ("accuracy_diff_low_pts", F, "its 95% interval's lower end (points) (rebuilt)"),
    ("accuracy_diff_high_pts", F, "its 95% interval's upper end (points) (rebuilt)"),
    ("accuracy_seeds", I, "training seeds every framework ran that the verdict reads (rebuilt)"),
    ("accuracy_seed_mean", F, "this framework's final validation accuracy, mean over those seeds (rebuilt)"),
    ("accuracy_seed_sd_pts", F, "its standard deviation over those seeds (points; null under 2) (rebuilt)"),
    ("accuracy_seeds_needed", I, "seeds that would resolve an unresolved verdict at the spread seen (rebuilt)"),
    (
        "converged",
        B,
        "whether this cell's last epoch moved validation accuracy by no more than accuracy_parity_pts "
        "(one epoch: false, no curve) (rebuilt)",
    ),
    ("convergence_evidence", S, "the learning-curve figures `converged` rests on (rebuilt)"),
    ("accuracy_convergence", S, "the group's cells still converging, which made it not_converged (rebuilt)"),
    (
        "accuracy_samples_needed",
        I,
        "validation samples that would resolve an unresolved verdict at the difference seen (rebuilt)",
    ),
    ("epochs_detail", pa.list_(EPOCH), "per-epoch loss, accuracy and timing (nested; flat in epochs.parquet)"),
    ("step_times_s", pa.list_(F), "raw wall times of the timed training steps (nested; flat in steps.parquet)"),
    ("warmup_times_s", pa.list_(F), "raw wall times of the warm-up steps"),
    ("inference_times_ms", pa.list_(F), "raw latencies of the timed inference passes at the cell's batch size"),
    ("inference_b1_times_ms", pa.list_(F), "raw latencies of the timed inference passes at batch size 1"),
]

SCHEMA = pa.schema([pa.field(name, typ) for name, typ, _ in COLUMNS], metadata={b"mlbench_schema": b"1"})
NESTED = [name for name, typ, _ in COLUMNS if pa.types.is_list(typ)]
# filled by rebuild from the cell rows (verify, parity, calibration, scaling, bottleneck): null in a cell
# row; each says "rebuilt" in its meaning
DERIVED = [name for name, _, meaning in COLUMNS if re.search(r"\brebuilt\b", meaning)]
FLAT = [name for name, _, _ in COLUMNS if name not in NESTED]


def markdown_table() -> str:
    """The column table of docs/results.md."""
    lines = ["| column | type | meaning |", "| --- | --- | --- |"]
    for name, typ, doc in COLUMNS:
        lines.append(f"| `{name}` | {typ} | {doc} |")
    return "\n".join(lines)
