"""Run by `test_ppo.py` under `torch.distributed.run` (2 CPU processes, gloo): one PPO-ptx update of the recipe,
then each process saves its trainable weights and the pretraining token ids it drew to `<out>/rank<N>.pt`.

Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_ppo_worker.py CONFIG OUT
"""

import sys
from pathlib import Path

import torch
from trl import ModelConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import load_recipe  # noqa: E402
from instructrl.configs import PPOScriptArguments, parse_args  # noqa: E402
from instructrl.ppo import InstructPPOConfig  # noqa: E402
from instructrl.ptx import PretrainingStream  # noqa: E402

drawn: list[torch.Tensor] = []
next_batch = PretrainingStream.next_batch


def recording_next_batch(self, size):
    ids, mask = next_batch(self, size)
    drawn.append(ids)
    return ids, mask


def main(config: str, out: str) -> None:
    PretrainingStream.next_batch = recording_next_batch
    args = parse_args((PPOScriptArguments, InstructPPOConfig, ModelConfig), ["--config", config])
    trainer = load_recipe("ppo").main(*args)
    rank = trainer.accelerator.process_index
    weights = {n: p.detach().clone() for n, p in trainer.shared.shared.named_parameters() if p.requires_grad}
    torch.save({"weights": weights, "ptx_ids": drawn}, Path(out) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
