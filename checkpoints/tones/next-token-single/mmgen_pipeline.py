"""Written by mmgen: lets diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
find the pipeline class. It only imports mmgen's installed pipelines."""
from pipelines import *  # noqa: F401,F403
