"""bls_add_sub: calls add_sub through BLS and returns its OUTPUT0/OUTPUT1 as SUM/DIFF."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Forwards each request to add_sub with a BLS call and renames the outputs."""

    def initialize(self, args):
        self.target = "add_sub"
        self.renames = {"OUTPUT0": "SUM", "OUTPUT1": "DIFF"}

    def execute(self, requests):
        responses = []
        for request in requests:
            bls_request = pb_utils.InferenceRequest(
                model_name=self.target,
                requested_output_names=list(self.renames),
                inputs=[
                    pb_utils.get_input_tensor_by_name(request, "INPUT0"),
                    pb_utils.get_input_tensor_by_name(request, "INPUT1"),
                ],
            )
            bls_response = bls_request.exec()
            if bls_response.has_error():
                raise pb_utils.TritonModelException(bls_response.error().message())
            outputs = [
                pb_utils.Tensor(ours, pb_utils.get_output_tensor_by_name(bls_response, theirs).as_numpy())
                for theirs, ours in self.renames.items()
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

    def finalize(self):
        pass
