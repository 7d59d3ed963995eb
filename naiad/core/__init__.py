"""The engine: repository discovery, model lifecycle, scheduling, statistics and the `InferenceServer` facade."""
