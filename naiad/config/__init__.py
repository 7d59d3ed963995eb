"""config.pbtxt ⇄ `ModelConfig`, and the server's settings."""
