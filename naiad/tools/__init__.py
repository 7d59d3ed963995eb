"""Tools for the path from a trained model to a served one: checking a repository, exporting a model."""
