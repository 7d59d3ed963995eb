"""Write the ResNet-50 walkthrough's repository entry: `<repository>/resnet50/1/model.onnx` and no config.pbtxt,
so that the server fills the config from the model. Random weights: nothing is downloaded.

    python examples/walkthroughs/export_resnet50_onnx.py models
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from networks import ResNet50


def write(repository: Path, base: int = 64, name: str = "resnet50") -> Path:
    """Export ResNet-50 with a dynamic batch dimension; returns the model file."""
    path = repository / name / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.onnx.export(
        ResNet50(base).eval(),
        (torch.zeros(1, 3, 224, 224),),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        dynamo=False,
    )
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--base", type=int, default=64, help="channels of the first stage (64: real ResNet-50)")
    options = parser.parse_args()
    print(f"wrote {write(options.repository, options.base)}")
