"""The Locust file users run against a deployment, run headless against a real server: requests built from the
model's metadata are answered, and failures are counted as failures."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ServerFactory

LOCUSTFILE = Path(__file__).resolve().parents[2] / "deploy" / "loadtest" / "locustfile.py"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"


def run_locust(host: str, model: str, out: Path, *extra: str) -> dict[str, dict[str, str]]:
    """Run the Locust file headless for 3 s; its CSV statistics by request name."""
    locust = shutil.which("locust", path=str(Path(sys.executable).parent))
    if locust is None:
        pytest.skip("locust is not installed (it is in the dev extra)")
    command = [
        locust, "-f", str(LOCUSTFILE), "--host", host, "--model", model, "--headless", "--users", "2",
        "--spawn-rate", "2", "--run-time", "3s", "--csv", str(out / "run"), "--only-summary", *extra,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, cwd=out)
    stats = out / "run_stats.csv"
    assert stats.exists(), result.stderr[-2000:]
    with stats.open() as file:
        return {row["Name"]: row for row in csv.DictReader(file)}


def test_locust_drives_a_model_from_its_metadata(naiad: ServerFactory, tmp_path: Path) -> None:
    server = naiad.start(EXAMPLES)
    stats = run_locust(server.url, "add_sub", tmp_path, "--batch", "2")
    assert int(stats["infer"]["Request Count"]) > 50
    assert stats["infer"]["Failure Count"] == "0"
    assert stats["metadata"]["Failure Count"] == "0"


def test_locust_counts_what_fails(naiad: ServerFactory, tmp_path: Path) -> None:
    server = naiad.start(EXAMPLES)
    body = tmp_path / "bad.json"
    body.write_text('{"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}')
    stats = run_locust(server.url, "add_sub", tmp_path, "--body", str(body))
    assert int(stats["infer"]["Failure Count"]) > 0
    assert stats["infer"]["Failure Count"] == stats["infer"]["Request Count"]
