"""The names of compute devices and precisions, without importing torch (the napari widget's process
validates them; :mod:`hhn.device` turns them into torch objects)."""

#: ``--device`` values: ``auto`` picks cuda, then mps, then cpu
DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
#: ``--precision`` values: ``auto`` is float16 on CUDA and float32 elsewhere (``hhn.device.inference_dtype``)
PRECISIONS = ("auto", "float32", "float16", "bfloat16")
