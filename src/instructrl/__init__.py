"""instructrl: the InstructGPT recipe (SFT, reward model, PPO-ptx) on hardware you own."""

from .hub_kernels import refuse_hub_kernels

__version__ = "0.1.0"

# Before anything imports bitsandbytes: no compiled kernels from the Hub unless asked (see hub_kernels.py).
refuse_hub_kernels()
