"""The Prometheus text writer: number formatting, escaping, families without samples, line endings."""

from __future__ import annotations

import math

from naiad.ops.exposition import Exposition, labels, number


def test_numbers_as_prometheus_cpp_writes_them() -> None:
    assert number(0) == "0"
    assert number(25276063744) == "25276063744"
    assert number(5.0) == "5"
    assert number(0.01507537688442211) == "0.01507537688442211"
    assert number(1 / 3) == "0.3333333333333333"  # 16 significant digits
    assert number(1e-05) == "1e-05"
    assert number(100.0) == "100"
    assert number(0.999) == "0.999"
    assert number(math.nan) == "Nan"
    assert number(math.inf) == "+Inf"
    assert number(-math.inf) == "-Inf"


def test_label_values_are_escaped() -> None:
    assert labels(("model", "add_sub"), ("version", "1")) == 'model="add_sub",version="1"'
    assert labels(("model", 'a"b\\c\nd')) == 'model="a\\"b\\\\c\\nd"'
    assert labels() == ""


def test_families_render_help_type_and_samples_and_skip_empty_ones() -> None:
    out = Exposition()
    success = out.family("nv_inference_request_success", "counter", "Number of successful inference requests")
    success.add(5, labels(("model", "m"), ("version", "1")))
    out.family("nv_gpu_utilization", "gauge", "GPU utilization rate [0.0 - 1.0)")  # no GPU: no samples
    cpu = out.family("nv_cpu_utilization", "gauge", "a help text with a \\ and a\nnewline")
    cpu.add(0.25)
    summary = out.family("s", "summary", "a summary")
    summary.add(3, 'model="m"', "_count")
    assert out.render().decode() == (
        "# HELP nv_inference_request_success Number of successful inference requests\n"
        "# TYPE nv_inference_request_success counter\n"
        'nv_inference_request_success{model="m",version="1"} 5\n'
        "# HELP nv_cpu_utilization a help text with a \\\\ and a\\nnewline\n"
        "# TYPE nv_cpu_utilization gauge\n"
        "nv_cpu_utilization 0.25\n"
        "# HELP s a summary\n"
        "# TYPE s summary\n"
        's_count{model="m"} 3\n'
    )


def test_nothing_to_render_is_empty() -> None:
    assert Exposition().render() == b""
