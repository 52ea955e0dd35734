"""The names the factory answers to, in a module without torch: the options table (``ar_ros/options.py``)
offers them as choices and must import without torch."""

BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "tensorrt")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
EXPORTED = ("onnxruntime", "onnxruntime-int8", "tensorrt")  # backends that run an export folder
