"""Many tritonclient HTTP clients at once against one model, and the statistics check that they shared executions."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import requests
import tritonclient.http as httpclient


def infer_concurrently(
    address: str,
    model: str,
    input_name: str,
    output_name: str,
    arrays: list[np.ndarray],
    clients: int = 16,
    datatype: str = "FP32",
) -> list[np.ndarray]:
    """One binary-tensor request per array from `clients` threads at once; each answer's `output_name`."""

    def infer(array: np.ndarray) -> np.ndarray:
        client = httpclient.InferenceServerClient(address)
        tensor = httpclient.InferInput(input_name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        result = client.infer(model, [tensor]).as_numpy(output_name)
        client.close()
        assert result is not None
        return result

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(infer, arrays))


def assert_batched(url: str, model: str, arrays: list[np.ndarray]) -> None:
    """The model counted every row of `arrays` as an inference, in fewer executions than requests."""
    stats = requests.get(f"{url}/v2/models/{model}/stats", timeout=5).json()["model_stats"][0]
    assert stats["inference_count"] == sum(len(array) for array in arrays)
    assert stats["execution_count"] < len(arrays), "concurrent requests should share executions"
