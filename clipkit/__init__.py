"""clipkit: Cheap Lipschitz training (CLIP) of neural networks, and the tools around it."""

__version__ = "0.1.0"
