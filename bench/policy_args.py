"""The options the SFT-vs-reward-model bench scripts share, and how `--run` names their directories."""

import argparse
from pathlib import Path


def add_policy_args(parser: argparse.ArgumentParser, run_help: str) -> None:
    """--run/--sft/--rm, the base model, and sampling as PPO's rollouts sample (its temperature and length)."""
    parser.add_argument("--run", type=Path, help=run_help)
    parser.add_argument("--sft", type=Path)
    parser.add_argument("--rm", type=Path)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7, help="the rollouts' temperature (PPO configs)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="PPO's response_length")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")


def resolve_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill --sft and --rm from --run (a pipeline output root) where they were not given; stop if either is missing."""
    if args.run is not None:
        args.sft, args.rm = args.sft or args.run / "sft", args.rm or args.run / "rm"
    if args.sft is None or args.rm is None:
        parser.error("give --run, or --sft and --rm")
