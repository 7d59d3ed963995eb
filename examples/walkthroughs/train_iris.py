"""Train IrisNet on scikit-learn's bundled Iris data and save its state_dict, as the Iris walkthrough does.

pip install scikit-learn
python examples/walkthroughs/train_iris.py iris_weights.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from networks import IrisNet


def train(weights: Path, epochs: int = 300) -> float:
    """Fit IrisNet on the whole data set; returns the training accuracy."""
    try:
        from sklearn.datasets import load_iris
    except ImportError:
        raise SystemExit("this walkthrough trains on scikit-learn's Iris data: pip install scikit-learn") from None
    data = load_iris()
    features = torch.tensor(data.data, dtype=torch.float32)
    labels = torch.tensor(data.target, dtype=torch.long)
    torch.manual_seed(0)
    model = IrisNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(features), labels)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = float((model(features).argmax(dim=1) == labels).float().mean())
    torch.save(model.state_dict(), weights)
    return accuracy


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "iris_weights.pt")
    print(f"trained IrisNet: accuracy {train(target):.3f}; weights in {target}")
