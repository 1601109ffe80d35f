"""diffusers-style pipelines: next-token, next-scale and next-X generation on the shared GPT."""
