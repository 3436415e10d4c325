"""instructrl: the InstructGPT recipe (SFT, reward model, PPO-ptx) on hardware you own."""

__version__ = "0.1.0"
