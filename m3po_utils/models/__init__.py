"""Models: the tiny LLaVA (build, save, load, SFT), prompt templates, generation, LoRA, TRL, and CLIP."""
