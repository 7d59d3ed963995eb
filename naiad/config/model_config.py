"""Triton's rules for a model config: defaults filled in, checks with messages naming the model, the result
as `domain.ModelConfig`."""

from __future__ import annotations

import copy
from types import MappingProxyType
from typing import Any

from tritonclient.grpc import model_config_pb2

from naiad.config import pbtxt
from naiad.domain.datatypes import DATATYPES, element_count, from_config_type
from naiad.domain.errors import invalid
from naiad.domain.model_config import (
    DynamicBatching,
    EnsembleStep,
    InstanceGroup,
    InstanceKind,
    ModelConfig,
    QueuePolicy,
    TensorSpec,
    TimeoutAction,
    VersionPolicy,
    VersionPolicyKind,
)

# `platform` names and the backend that serves each.
PLATFORM_BACKENDS = {
    "pytorch_libtorch": "pytorch",
    "onnxruntime_onnx": "onnxruntime",
    "ensemble": "ensemble",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
    "tensorrt_plan": "tensorrt",
}


_TWO_CPU_INSTANCES = ("onnxruntime", "tensorflow")


def backend_name(raw: dict[str, Any]) -> str:
    """The backend a config asks for, from `backend` or else `platform` ("" when neither says)."""
    backend = str(raw.get("backend") or "")
    if backend:
        return backend
    return PLATFORM_BACKENDS.get(str(raw.get("platform") or ""), "")


def build(raw: dict[str, Any], folder_name: str, gpus: tuple[int, ...] = ()) -> ModelConfig:
    """Check a model's config (Triton's JSON form) and fill its defaults, as Triton does at load; `gpus` are the
    GPUs instances may be placed on (`devices.visible_gpus()`)."""
    where = f"model '{folder_name}'"
    proto = pbtxt.from_json(raw, where)
    if proto.name and proto.name != folder_name:
        raise invalid(
            f"model configuration name '{proto.name}' does not match the model directory name "
            f"'{folder_name}'; Triton requires them to be equal"
        )
    proto.name = folder_name
    if not proto.backend and proto.platform != "ensemble":
        proto.backend = backend_name(raw)
    if proto.max_batch_size < 0:
        raise invalid(f"max_batch_size must be >= 0 for {where}, got {proto.max_batch_size}")
    if not proto.HasField("version_policy"):
        proto.version_policy.latest.num_versions = 1
    ensemble = proto.platform == "ensemble" or proto.HasField("ensemble_scheduling") or proto.backend == "ensemble"
    if ensemble:
        _check_ensemble(proto, where)
    elif not proto.instance_group:
        proto.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    auto_on_gpu: set[str] = set()
    for index, group in enumerate(proto.instance_group):
        if not group.name:
            group.name = f"{folder_name}_{index}"
        if _place(group, gpus, folder_name):
            auto_on_gpu.add(group.name)
        if group.count < 1:
            # as in Triton: two CPU instances for the ONNX Runtime and TensorFlow backends, one otherwise
            two = group.kind == group.KIND_CPU and proto.backend in _TWO_CPU_INSTANCES
            group.count = 2 if two else 1
    choice = proto.WhichOneof("scheduling_choice")
    if choice == "sequence_batching":
        raise invalid(f"{choice} is not supported by naiad yet ({where})")
    if proto.model_transaction_policy.decoupled:
        raise invalid(f"decoupled models are not supported by naiad yet ({where})")
    filled = pbtxt.to_json(proto)
    check_file_names(filled, where)

    batching = _dynamic_batching(filled.get("dynamic_batching"), proto.max_batch_size, where)
    return ModelConfig(
        name=folder_name,
        backend=proto.backend,
        platform=proto.platform,
        max_batch_size=proto.max_batch_size,
        inputs=tuple(_tensor(item, "input", where) for item in filled.get("input", [])),
        outputs=tuple(_tensor(item, "output", where) for item in filled.get("output", [])),
        version_policy=_version_policy(filled.get("version_policy", {})),
        instance_groups=tuple(_instance_group(item, where, auto_on_gpu) for item in filled.get("instance_group", [])),
        dynamic_batching=batching,
        default_model_filename=proto.default_model_filename,
        parameters=MappingProxyType(parameter_values(filled)),
        raw=MappingProxyType(copy.deepcopy(filled)),
        ensemble_steps=tuple(_ensemble_step(item) for item in filled.get("ensemble_scheduling", {}).get("step", [])),
    )


def parameter_values(raw: dict[str, Any]) -> dict[str, str]:
    """The `parameters` of a config in Triton's JSON form, as their string values."""
    parameters = raw.get("parameters", {})
    if not isinstance(parameters, dict):
        return {}
    return {
        str(key): str(value.get("string_value", "")) if isinstance(value, dict) else ""
        for key, value in parameters.items()
    }


def check_file_names(raw: dict[str, Any], where: str) -> None:
    """Every file a config (Triton's JSON form) names must lie inside the model's folder: a config may come from a
    load request, and a path like `/etc/passwd` or `../../x.pt` would make the server read, import or unpickle any
    file. Checked before auto-complete, which already opens the model file."""
    named = [("default_model_filename", raw.get("default_model_filename", ""))]
    cc_files = raw.get("cc_model_filenames", {})
    if isinstance(cc_files, dict):  # a malformed config is refused later, with its own message
        named += [(f"cc_model_filenames['{key}']", value) for key, value in cc_files.items()]
    outputs = raw.get("output", [])
    if isinstance(outputs, list):
        named += [
            (f"label_filename of output '{o.get('name', '')}'", o.get("label_filename", ""))
            for o in outputs
            if isinstance(o, dict)
        ]
    for field_name, value in named:
        text = str(value or "")
        if text.startswith(("/", "\\")) or "\0" in text or ".." in text.replace("\\", "/").split("/"):
            raise invalid(f"{field_name} '{text}' of {where} must name a file inside the model folder")


def _place(group: Any, gpus: tuple[int, ...], model: str) -> bool:
    """Triton's placement: KIND_AUTO is KIND_GPU where the GPUs exist, KIND_GPU without `gpus` means every GPU.
    True when a KIND_AUTO group was placed on GPUs."""
    kinds = model_config_pb2.ModelInstanceGroup
    where = f"instance group {group.name} of model {model}"
    auto = group.kind == kinds.KIND_AUTO
    if auto:
        fits = bool(gpus) and all(gpu in gpus for gpu in group.gpus)
        group.kind = kinds.KIND_GPU if fits else kinds.KIND_CPU
        if not fits:
            del group.gpus[:]
    if group.kind == kinds.KIND_GPU:
        if not gpus:
            raise invalid(f"{where} has kind KIND_GPU but no GPUs are available")
        for gpu in group.gpus:
            if gpu not in gpus:
                raise invalid(
                    f"{where} specifies invalid or unsupported gpu id {gpu}. GPUs available: "
                    f"{', '.join(str(g) for g in gpus)}"
                )
        if not group.gpus:
            group.gpus.extend(gpus)
    elif group.kind == kinds.KIND_MODEL:
        raise invalid(f"{where} has kind KIND_MODEL; naiad places instances with KIND_CPU, KIND_GPU or KIND_AUTO")
    return bool(auto and group.kind == kinds.KIND_GPU)


def _check_ensemble(proto: Any, where: str) -> None:
    """Triton's static checks of an ensemble's config, before its composing models are known."""
    name = proto.name
    if proto.backend:
        raise invalid(f"Ensemble model '{name}' must have platform type 'ensemble' and empty backend type")
    if proto.platform != "ensemble":
        raise invalid(f"ensemble scheduling cannot be set for {where} whose platform is not ensemble")
    if not proto.HasField("ensemble_scheduling"):
        raise invalid(f"ensemble scheduling must be set for ensemble {name} whose platform is ensemble")
    if proto.instance_group:
        raise invalid(f"instance group should not be specified for ensemble '{name}'")
    if proto.HasField("dynamic_batching"):
        raise invalid(f"dynamic batching should not be specified for ensemble '{name}'")
    steps = proto.ensemble_scheduling.step
    if not steps:
        raise invalid(f"must specify 'step' for ensemble '{name}'")
    written: set[str] = set()
    for index, step in enumerate(steps):
        for field_name in ("model_name", "input_map", "output_map"):
            if not getattr(step, field_name):
                raise invalid(f"must specify '{field_name}' in step {index} of ensemble '{name}'")
        for tensor in step.output_map.values():
            if tensor in written:
                raise invalid(
                    f"ensemble tensor '{tensor}' can appear in an output map only once for ensemble '{name}' "
                    f"step {index}"
                )
            written.add(tensor)
    consumed = {tensor for step in steps for tensor in step.input_map.values()}
    outputs = {output.name for output in proto.output}
    for tensor in sorted(written - consumed - outputs):
        raise invalid(f"ensemble tensor '{tensor}' is unused in ensemble '{name}'")


def _ensemble_step(item: dict[str, Any]) -> EnsembleStep:
    return EnsembleStep(
        model_name=str(item["model_name"]),
        model_version=int(item.get("model_version", -1)),
        input_map=MappingProxyType(dict(item.get("input_map", {}))),
        output_map=MappingProxyType(dict(item.get("output_map", {}))),
    )


def _tensor(item: dict[str, Any], kind: str, where: str) -> TensorSpec:
    name = str(item.get("name", ""))
    if not name:
        raise invalid(f"model {kind} must specify 'name' for {where}")
    datatype = from_config_type(str(item.get("data_type", "TYPE_INVALID")))
    if datatype not in DATATYPES:
        raise invalid(f"model {kind} '{name}' must specify 'data_type' for {where}")
    dims = tuple(int(d) for d in item.get("dims", []))
    for dim in dims:
        if dim < 1 and dim != -1:
            raise invalid(
                f"model {kind} '{name}' dimension must be integer >= 1, or -1 to indicate a "
                f"variable-size dimension for {where}"
            )
    reshape = None
    if "reshape" in item:
        reshape = tuple(int(d) for d in item["reshape"].get("shape", []))
        if -1 not in dims and -1 not in reshape and element_count(dims) != element_count(reshape):
            raise invalid(
                f"model {kind} '{name}' has different size for dims and reshape for {where}: "
                f"{list(dims)} holds {element_count(dims)} elements, {list(reshape)} holds "
                f"{element_count(reshape)}"
            )
    return TensorSpec(
        name=name,
        datatype=datatype,
        dims=dims,
        reshape=reshape,
        optional=bool(item.get("optional", False)),
        label_filename=str(item.get("label_filename", "")),
    )


def _version_policy(data: dict[str, Any]) -> VersionPolicy:
    if "all" in data:
        return VersionPolicy(VersionPolicyKind.ALL)
    if "specific" in data:
        versions = tuple(int(v) for v in data["specific"].get("versions", []))
        return VersionPolicy(VersionPolicyKind.SPECIFIC, versions=versions)
    latest = data.get("latest", {})
    return VersionPolicy(VersionPolicyKind.LATEST, num_versions=int(latest.get("num_versions", 1)))


def _instance_group(data: dict[str, Any], where: str, auto_on_gpu: set[str]) -> InstanceGroup:
    kind = InstanceKind(data.get("kind", "KIND_CPU"))
    gpus = tuple(int(g) for g in data.get("gpus", []))
    name = str(data["name"])
    if kind is InstanceKind.CPU and gpus:
        raise invalid(f"instance group {name} of {where} has kind KIND_CPU but specifies one or more GPUs")
    return InstanceGroup(name=name, kind=kind, count=int(data.get("count", 1)), gpus=gpus, auto=name in auto_on_gpu)


def _dynamic_batching(data: dict[str, Any] | None, max_batch_size: int, where: str) -> DynamicBatching | None:
    if data is None:
        return None
    if max_batch_size == 0:
        raise invalid(f"dynamic batching needs max_batch_size > 0 for {where}")
    preferred = tuple(int(size) for size in data.get("preferred_batch_size", []))
    for size in preferred:
        if size < 1 or size > max_batch_size:
            raise invalid(
                f"dynamic batching preferred size must be >= 1 and <= max batch size ({max_batch_size}) "
                f"for {where}, got {size}"
            )
    if int(data.get("priority_levels", 0)) > 0:
        raise invalid(f"dynamic batching priority levels are not supported by naiad yet ({where})")
    policy_data = data.get("default_queue_policy", {})
    policy = QueuePolicy(
        max_queue_size=int(policy_data.get("max_queue_size", 0)),
        default_timeout_us=int(policy_data.get("default_timeout_microseconds", 0)),
        timeout_action=TimeoutAction(policy_data.get("timeout_action", "REJECT")),
        allow_timeout_override=bool(policy_data.get("allow_timeout_override", False)),
    )
    preserve = bool(data.get("preserve_ordering", False))
    if preserve and policy.timeout_action is TimeoutAction.DELAY:
        raise invalid(f"Queue policy can not have DELAY as timeout action when 'preserve_ordering' is true for {where}")
    return DynamicBatching(
        preferred_batch_sizes=tuple(sorted(preferred)),
        max_queue_delay_us=int(data.get("max_queue_delay_microseconds", 0)),
        preserve_ordering=preserve,
        queue_policy=policy,
    )
