"""string_upper: OUTPUT0 is INPUT0's UTF-8 strings upper-cased (a BYTES model, Triton Python backend)."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Upper-cases each element of a BYTES tensor, keeping its shape."""

    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            upper = [s.decode("utf-8").upper().encode("utf-8") for s in in_0.reshape(-1)]
            out_0 = np.array(upper, dtype=self.output0_dtype).reshape(in_0.shape)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", out_0)]))
        return responses

    def finalize(self):
        pass
