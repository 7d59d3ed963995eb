"""The Python backend: Triton `model.py` files and the `triton_python_backend_utils` module they import."""
