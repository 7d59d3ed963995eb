"""Protocol adapters: decode, call `InferenceServer`, encode."""
