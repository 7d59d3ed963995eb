"""Turns a model's result into the outputs a client asked for: selection, `reshape` undone, and Triton's
classification extension (`"value:index[:label]"` strings for the top N)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from naiad.domain.errors import internal, invalid
from naiad.domain.model_config import ModelConfig
from naiad.domain.tensors import InferenceRequest, InferenceResult, Tensor


class OutputShaper:
    """Selects and shapes the outputs of one model version's results."""

    def __init__(self, config: ModelConfig, model_dir: Path) -> None:
        self._model = config.name
        self._batched = config.max_batch_size > 0
        self._dims = {spec.name: spec.dims for spec in config.outputs if spec.reshape is not None}
        self._labels: dict[str, list[str]] = {}
        for spec in config.outputs:
            if spec.label_filename:
                path = model_dir / spec.label_filename
                try:
                    self._labels[spec.name] = path.read_text(encoding="utf-8").splitlines()
                except OSError as exc:
                    raise invalid(
                        f"failed to read labels file '{path}' of output '{spec.name}' for model "
                        f"'{self._model}': {exc.strerror}"
                    ) from None

    def shape(self, request: InferenceRequest, result: InferenceResult) -> tuple[Tensor, ...]:
        """The response's output tensors for `request`."""
        outputs = result.outputs
        if self._dims:
            outputs = tuple(self._undo_reshape(tensor) for tensor in outputs)
        wanted = request.outputs
        if wanted is None:
            return outputs
        by_name = {tensor.name: tensor for tensor in outputs}
        selected: list[Tensor] = []
        for output in wanted:
            tensor = by_name.get(output.name)
            if tensor is None:
                raise internal(f"model '{self._model}' did not produce the requested output '{output.name}'")
            classes = output.parameters.get("classification") if output.parameters else None
            if classes is not None and classes is not False:
                tensor = self._classify(tensor, classes)
            selected.append(tensor)
        return tuple(selected)

    def _undo_reshape(self, tensor: Tensor) -> Tensor:
        dims = self._dims.get(tensor.name)
        if dims is None:
            return tensor
        shape = (tensor.shape[0], *dims) if self._batched else dims
        try:
            data = tensor.data.reshape(shape)
        except ValueError:
            raise internal(
                f"output '{tensor.name}' of model '{self._model}' has shape {list(tensor.shape)}, which cannot "
                f"be reshaped to the configured {list(shape)}"
            ) from None
        return Tensor(tensor.name, tensor.datatype, tuple(data.shape), data, tensor.parameters)

    def _classify(self, tensor: Tensor, classes: object) -> Tensor:
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise invalid(f"'classification' of output '{tensor.name}' must be a positive integer, got {classes!r}")
        if tensor.datatype in ("BYTES", "BF16"):
            raise invalid(
                f"classification is not supported for output '{tensor.name}' of datatype {tensor.datatype} "
                f"for model '{self._model}'"
            )
        data = tensor.data
        rows = data.reshape(data.shape[0], -1) if self._batched and data.ndim > 0 else data.reshape(1, -1)
        count = min(classes, rows.shape[1])
        labels = self._labels.get(tensor.name, [])
        is_float = data.dtype.kind == "f"
        out: np.ndarray = np.empty((rows.shape[0], count), dtype=np.object_)
        for row_index, row in enumerate(rows):
            order = np.argsort(-row.astype(np.float64), kind="stable")[:count]
            for column, index in enumerate(order):
                value = f"{float(row[index]):f}" if is_float else str(row[index])
                text = f"{value}:{index}"
                if index < len(labels):
                    text += f":{labels[index]}"
                out[row_index, column] = text.encode("utf-8")
        if not self._batched:
            out = out.reshape(count)
        return Tensor(tensor.name, "BYTES", tuple(out.shape), out)


__all__ = ["OutputShaper"]
