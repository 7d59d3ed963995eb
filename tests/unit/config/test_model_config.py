"""config.pbtxt parsing with Triton's grammar, defaults and checks."""

from pathlib import Path

import pytest

from naiad.config import model_config, pbtxt
from naiad.domain.errors import ServerError
from naiad.domain.model_config import TimeoutAction, VersionPolicyKind

ADD_SUB = """
name: "add_sub"
backend: "python"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] optional: true }
]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] label_filename: "labels.txt" } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 4, 2 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { max_queue_size: 3 default_timeout_microseconds: 5000 timeout_action: DELAY }
}
version_policy: { specific: { versions: [1, 3] } }
parameters: { key: "k" value: { string_value: "v" } }
"""


def build(text: str, folder: str = "add_sub", gpus: tuple[int, ...] = ()) -> model_config.ModelConfig:
    return model_config.build(pbtxt.to_json(pbtxt.parse_text(text, "config.pbtxt")), folder, gpus)


def test_full_config() -> None:
    config = build(ADD_SUB)
    assert config.name == "add_sub"
    assert config.backend == "python"
    assert config.max_batch_size == 8
    assert [i.name for i in config.inputs] == ["INPUT0", "INPUT1"]
    assert config.inputs[0].datatype == "FP32" and config.inputs[0].dims == (16,)
    assert config.inputs[1].optional
    assert config.outputs[0].label_filename == "labels.txt"
    assert config.instance_groups[0].count == 2
    assert config.instance_groups[0].name == "add_sub_0"
    batching = config.dynamic_batching
    assert batching is not None
    assert batching.preferred_batch_sizes == (2, 4)
    assert batching.max_queue_delay_us == 100
    assert batching.queue_policy.max_queue_size == 3
    assert batching.queue_policy.timeout_action is TimeoutAction.DELAY
    assert config.version_policy.kind is VersionPolicyKind.SPECIFIC
    assert config.version_policy.select([1, 2, 3, 4]) == [1, 3]
    assert config.parameters == {"k": "v"}


def test_raw_is_tritons_json_with_numbers_and_defaults() -> None:
    raw = build(ADD_SUB).raw
    assert raw["input"][0]["dims"] == [16]
    assert raw["input"][0]["data_type"] == "TYPE_FP32"
    assert raw["max_batch_size"] == 8
    assert raw["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert raw["instance_group"][0] == {
        **raw["instance_group"][0],
        "name": "add_sub_0",
        "kind": "KIND_CPU",
        "count": 2,
    }
    assert raw["version_policy"] == {"specific": {"versions": [1, 3]}}


def test_defaults_fill_name_policy_and_instances() -> None:
    config = build('backend: "python" input [{name: "I" data_type: TYPE_INT32 dims: [-1]}]', "m")
    assert config.name == "m"
    assert config.max_batch_size == 0
    assert config.version_policy.kind is VersionPolicyKind.LATEST
    assert config.version_policy.select([1, 2, 3]) == [3]
    assert config.instance_groups[0].count == 1
    assert config.raw["version_policy"] == {"latest": {"num_versions": 1}}
    assert config.dynamic_batching is None


def test_name_must_match_folder() -> None:
    with pytest.raises(ServerError, match="'other' does not match the model directory name 'add_sub'"):
        build('name: "other" backend: "python"')


def test_grammar_errors_name_the_file() -> None:
    with pytest.raises(ServerError, match=r"failed to parse config\.pbtxt"):
        build('name: "add_sub" max_batch_size: "eight"')


def test_bad_dims_and_reshape() -> None:
    with pytest.raises(ServerError, match="dimension must be integer >= 1, or -1"):
        build('backend: "python" input [{name: "I" data_type: TYPE_FP32 dims: [0]}]')
    with pytest.raises(ServerError, match="different size for dims and reshape"):
        build('backend: "python" input [{name: "I" data_type: TYPE_FP32 dims: [4] reshape: {shape: [3]}}]')


def test_batching_rules() -> None:
    with pytest.raises(ServerError, match="preferred size must be"):
        build('backend: "python" max_batch_size: 2 dynamic_batching { preferred_batch_size: [4] }')
    with pytest.raises(ServerError, match="needs max_batch_size > 0"):
        build('backend: "python" dynamic_batching { }')
    with pytest.raises(ServerError, match="can not have DELAY as timeout action"):
        build(
            'backend: "python" max_batch_size: 2 dynamic_batching { preserve_ordering: true '
            "default_queue_policy { timeout_action: DELAY } }"
        )


def test_unsupported_features_are_refused() -> None:
    with pytest.raises(ServerError, match="sequence_batching is not supported"):
        build('backend: "python" max_batch_size: 2 sequence_batching { }')
    with pytest.raises(ServerError, match="KIND_MODEL; naiad places instances with KIND_CPU, KIND_GPU or KIND_AUTO"):
        build('backend: "python" instance_group [{ kind: KIND_MODEL }]')


def test_instances_are_placed_as_triton_places_them() -> None:
    with pytest.raises(ServerError, match="instance group add_sub_0 of model add_sub has kind KIND_GPU but no GPUs"):
        build('backend: "python" instance_group [{ kind: KIND_GPU }]')
    with pytest.raises(ServerError, match=r"specifies invalid or unsupported gpu id 3\. GPUs available: 0, 1"):
        build('backend: "python" instance_group [{ kind: KIND_GPU gpus: [ 3 ] }]', gpus=(0, 1))
    with pytest.raises(ServerError, match="has kind KIND_CPU but specifies one or more GPUs"):
        build('backend: "python" instance_group [{ kind: KIND_CPU gpus: [ 0 ] }]', gpus=(0,))
    every_gpu = build('backend: "python" instance_group [{ kind: KIND_GPU count: 2 }]', gpus=(0, 1))
    assert [(g.kind.value, g.gpus, g.count) for g in every_gpu.instance_groups] == [("KIND_GPU", (0, 1), 2)]
    assert every_gpu.raw["instance_group"][0]["gpus"] == [0, 1]
    auto_here = build('backend: "python" instance_group [{ kind: KIND_AUTO }]')
    assert [(g.kind.value, g.gpus) for g in auto_here.instance_groups] == [("KIND_CPU", ())]
    auto_gpu = build('backend: "python" instance_group [{ kind: KIND_AUTO }]', gpus=(0,))
    assert [(g.kind.value, g.gpus, g.auto) for g in auto_gpu.instance_groups] == [("KIND_GPU", (0,), True)]
    assert not every_gpu.instance_groups[0].auto
    auto_missing = build('backend: "python" instance_group [{ kind: KIND_AUTO gpus: [ 2 ] }]', gpus=(0,))
    assert [(g.kind.value, g.gpus) for g in auto_missing.instance_groups] == [("KIND_CPU", ())]


def test_platform_names_backend() -> None:
    assert model_config.backend_name({"platform": "onnxruntime_onnx"}) == "onnxruntime"
    assert model_config.backend_name({"backend": "python", "platform": "x"}) == "python"


def test_read_file(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text(ADD_SUB)
    assert pbtxt.read_file(path)["name"] == "add_sub"
    with pytest.raises(ServerError, match="failed to read"):
        pbtxt.read_file(tmp_path / "missing.pbtxt")
