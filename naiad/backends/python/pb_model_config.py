"""`pb_utils.ModelConfig`: the config a model's `auto_complete_config` reads and fills in."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from naiad.domain.datatypes import DATATYPES, to_config_type


class ModelConfig:
    """The config an `auto_complete_config` staticmethod reads and fills in (Triton's JSON form)."""

    def __init__(self, model_config: str | Mapping[str, Any]) -> None:
        loaded = json.loads(model_config) if isinstance(model_config, str) else copy.deepcopy(dict(model_config))
        loaded.setdefault("name", "")
        loaded.setdefault("max_batch_size", 0)
        loaded.setdefault("input", [])
        loaded.setdefault("output", [])
        self._model_config: dict[str, Any] = loaded

    def as_dict(self) -> dict[str, Any]:
        """The config as a dict."""
        return self._model_config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        """Set `max_batch_size`; refused when the config already sets a larger one."""
        config = self._model_config
        if int(config["max_batch_size"]) > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {config['max_batch_size']}, but in auto-complete-config "
                f"function for model '{config['name']}' specified max_batch_size {max_batch_size}"
            )
        config["max_batch_size"] = int(max_batch_size)

    def set_dynamic_batching(self) -> None:
        """Use the dynamic batcher unless the config chose another scheduler."""
        config = self._model_config
        for scheduler in ("sequence_batching", "ensemble_scheduling"):
            if scheduler in config:
                raise ValueError(
                    f"Configuration specified scheduling_choice as '{scheduler}', but auto-complete-config "
                    f"function for model '{config['name']}' tries to set scheduling_choice as 'dynamic_batching'"
                )
        config.setdefault("dynamic_batching", {})

    def add_input(self, input: Mapping[str, Any]) -> None:
        """Add an input `{"name", "data_type", "dims"[, "optional"]}`, or check it against the config's."""
        self._add("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: Mapping[str, Any]) -> None:
        """Add an output `{"name", "data_type", "dims"}`, or check it against the config's."""
        self._add("output", output, ("name", "data_type", "dims"))

    def set_model_transaction_policy(self, transaction_policy_dict: Mapping[str, Any]) -> None:
        """Set `model_transaction_policy` (only `decoupled`)."""
        config = self._model_config
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise ValueError(
                    "model transaction property in auto-complete-config function for model "
                    f"'{config['name']}' contains property other than 'decoupled'."
                )
        policy = config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            wanted = bool(transaction_policy_dict["decoupled"])
            if "decoupled" in policy and bool(policy["decoupled"]) != wanted:
                raise ValueError(
                    f"trying to change decoupled property in auto-complete-config for model '{config['name']}', "
                    f"which is already set to '{policy['decoupled']}'."
                )
            policy["decoupled"] = wanted

    def _add(self, kind: str, tensor: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        model = self._model_config["name"]
        name = str(tensor.get("name", ""))
        for key in tensor:
            if key not in allowed:
                listed = ", ".join(f"'{k}'" for k in allowed[:-1]) + f" and '{allowed[-1]}'"
                raise ValueError(
                    f"{kind} '{name}' in auto-complete-config function for model '{model}' contains property "
                    f"other than {listed}."
                )
        if "name" not in tensor:
            raise ValueError(f"{kind} in auto-complete-config function for model '{model}' is missing 'name' property.")
        for key in ("data_type", "dims"):
            if key not in tensor:
                raise ValueError(
                    f"{kind} '{name}' in auto-complete-config function for model '{model}' is missing '{key}' property."
                )
        data_type = str(tensor["data_type"])
        if data_type in DATATYPES:
            data_type = to_config_type(data_type)
        dims = [int(dim) for dim in tensor["dims"]]
        for current in self._model_config[kind]:
            if current.get("name") != name:
                continue
            configured = str(current.get("data_type", "TYPE_INVALID"))
            if configured != "TYPE_INVALID" and configured != data_type:
                raise ValueError(
                    f"unable to load model '{model}', configuration expects datatype {configured} for {kind} "
                    f"'{name}', model provides {data_type}"
                )
            current_dims = [int(dim) for dim in current.get("dims", [])]
            if current_dims and current_dims != dims:
                raise ValueError(
                    f"model '{model}', tensor '{name}': the model expects dims {dims} but the model "
                    f"configuration specifies dims {current_dims}"
                )
            if "optional" in current and "optional" in tensor and bool(current["optional"]) != bool(tensor["optional"]):
                raise ValueError(
                    f"model '{model}', tensor '{name}': the model expects optional {tensor['optional']} but the "
                    f"model configuration specifies optional {current['optional']}"
                )
            current["data_type"] = data_type
            current["dims"] = dims
            if "optional" in tensor:
                current["optional"] = bool(tensor["optional"])
            return
        added: dict[str, Any] = {"name": name, "data_type": data_type, "dims": dims}
        if "optional" in tensor:
            added["optional"] = bool(tensor["optional"])
        self._model_config[kind].append(added)
