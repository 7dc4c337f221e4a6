"""The data path: training data read from files through each framework's own loader.

`order` says which samples make each batch of an epoch (one pure function every loader follows) and
how each is augmented; `formats` writes and reads the shards (raw, npz, tfrecord, hdf5); `loaders`
builds each framework's own input pipeline (PyTorch's DataLoader, tf.data, Grain) over them; `feed`
is what the training loop iterates: a loader's batches, digested and made into model inputs, with
the figures of the data path (time to first batch, loader-only throughput, the wait of each step).
"""
