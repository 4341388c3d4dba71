"""What TensorFlow runs on: starting it without its noise, the precision its layers compute in, and spreading
training over the devices.

    tf = devices.import_tensorflow()           # before anything else imports tensorflow
    dtype = devices.compute_dtype(mixed_precision=True)
    strategy = devices.distribution_strategy("GPU:0,GPU:1")
"""
import os
import sys
from contextlib import contextmanager


@contextmanager
def stderr_silenced():
    """Send everything written to file descriptor 2, by Python or by C++, to /dev/null while the block runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow():
    """tensorflow, imported and its devices found, without the start-up lines its C++ core writes to stderr
    before any setting can stop them: on a machine without a GPU they include "E0000 ... failed call to cuInit",
    which reads like an error and is not one. Whoever sets TF_CPP_MIN_LOG_LEVEL (TF_CPP_MIN_LOG_LEVEL=0 python
    run.py) sees them all, as TensorFlow prints them."""
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        import tensorflow as tf
        return tf
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # and later notices: warnings and errors only
    with stderr_silenced():
        import tensorflow as tf
        tf.config.list_physical_devices()  # where CUDA is looked for, and its absence logged
    return tf


def has_bfloat16_units():
    """Whether this CPU multiplies bfloat16 numbers in hardware (x86's AMX or AVX512-BF16, Arm's BF16), as Linux's
    /proc/cpuinfo lists its features; False where there is no such file."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            features = set(cpuinfo.read().split())
    except OSError:
        return False
    return bool(features & {"amx_bf16", "avx512_bf16", "bf16"})


def compute_dtype(mixed_precision):
    """What the layers compute in (the weights stay float32): float32 without mixed precision; with it, float16 on
    a GPU (its tensor cores), bfloat16 on a CPU with bfloat16 units, and float32 on any other CPU, which would
    emulate bfloat16 more slowly than it computes float32."""
    if not mixed_precision:
        return "float32"
    if import_tensorflow().config.list_physical_devices("GPU"):
        return "float16"
    return "bfloat16" if has_bfloat16_units() else "float32"


def distribution_strategy(devices):
    """How training spreads over devices (--devices): tf.distribute.MirroredStrategy over the named devices, or
    over every GPU when none is named, keeps a copy of the network on each and splits each batch between them;
    with one device, or none but the CPU, TensorFlow's default. Naming several CPUs ("CPU:0,CPU:1") splits the
    processor into that many logical devices: how the tests try several devices on a machine without GPUs.
    With TF_CONFIG set, one run.py on each machine it lists trains together (MultiWorkerMirroredStrategy).
    -> the strategy; ValueError for a device that is not there."""
    tf = import_tensorflow()
    if "TF_CONFIG" in os.environ:
        return tf.distribute.MultiWorkerMirroredStrategy()
    names = [name.upper() for name in device_names(devices)]
    if not names:
        names = [f"GPU:{index}" for index in range(len(tf.config.list_physical_devices("GPU")))]
    n_cpus = sum(name.startswith("CPU:") for name in names)
    if n_cpus > 1:  # must come before TensorFlow sets up its devices, so before anything runs
        tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                                   [tf.config.LogicalDeviceConfiguration()] * n_cpus)
    available = [device.name.removeprefix("/device:") for device in tf.config.list_logical_devices()]
    for name in names:
        if name not in available:
            raise ValueError(f"--devices {devices}: there is no {name} here; the devices are {', '.join(available)}")
    if len(names) > 1:
        return tf.distribute.MirroredStrategy(names)
    return tf.distribute.OneDeviceStrategy(names[0]) if names else tf.distribute.get_strategy()


def device_names(devices):
    """"gpu:0, GPU:1" -> ["gpu:0", "GPU:1"]; "" -> []."""
    return [name.strip() for name in devices.split(",") if name.strip()]
