"""naiad: a Triton-compatible inference server for the KServe V2 / Open Inference Protocol."""

__version__ = "0.1.0"

__all__ = ["__version__"]
