"""The vocabulary every room shares: tensors, datatypes, errors and the model config."""
