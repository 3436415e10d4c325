"""How much memory one PPO update needs, in each layout, from the model's config alone.

    python -m instructrl.memory --model_name_or_path Qwen/Qwen2.5-7B-Instruct --load_in_4bit --gpu_gb 80

Users ask "will PPO of my 7B fit on my GPU?". This answers from `config.json` (no weights are loaded) for

- **shared** (instructrl): one base (fp32, bf16 or 4-bit nf4) with four LoRA adapters (policy, reference, reward,
  value) and two scalar heads; only the policy and value adapters and the value head train;
- **trl** (TRL's default): the policy base with a LoRA adapter (the reference is the base with adapters off), a full
  reward model and a full value model, the value model trained in full (its gradients and AdamW states included).

Counted: weights; trainable parameters' gradients and AdamW states (fp32 for LoRA, the weight dtype for the full
value model); and the larger of the two phases of an update: the rollout (KV cache while sampling, the per-step
logits TRL keeps, the scoring forwards) and a training micro-batch (activations of the policy and value forwards kept
for one backward, fp32 logits and their gradient). Activations follow the usual per-layer count without recomputation
(Korthikanti et al. 2022, adapted to a gated MLP and attention probabilities kept by the math attention kernel);
allocator caching, CUDA context and framework overhead are not modelled, so leave 10-20% headroom. The benchmark
`bench/ppo_layouts.py` prints the measured peaks this model is compared with in README.
"""

import argparse
import math
from dataclasses import dataclass

GIB = 2**30
# bytes per parameter: nf4 stores 4 bits plus one fp32 absmax per block of 64 (bitsandbytes' default blocksize)
WEIGHT_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "nf4": 0.5 + 4 / 64}
ADAM_STATES = 2


@dataclass(frozen=True)
class Shape:
    """What the memory model needs of a decoder-only transformer's config."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool

    @classmethod
    def from_config(cls, config) -> "Shape":
        heads = config.num_attention_heads
        return cls(
            vocab=config.vocab_size,
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate=config.intermediate_size,
            tied=bool(getattr(config, "tie_word_embeddings", False)),
        )

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one block: q, k, v, o, gate, up, down."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes())

    def other_params(self, lm_head: bool = True) -> int:
        """Embeddings, norms and (untied) LM head: what stays unquantized in 4-bit."""
        head = self.vocab * self.hidden if lm_head and not self.tied else 0
        return self.vocab * self.hidden + self.layers * 2 * self.hidden + self.hidden + head

    def params(self) -> int:
        return self.linear_params() + self.other_params()

    def lora_params(self, rank: int, layers: int | None = None) -> int:
        """A rank-`rank` LoRA on every linear layer of `layers` blocks (all of them by default)."""
        return (self.layers if layers is None else layers) * sum(rank * (a + b) for a, b in self.linear_shapes())


@dataclass(frozen=True)
class Workload:
    """One PPO update: `batch` rollouts of `prompt_length + response_length` tokens.

    Sampled and scored `rollout_chunk` at a time (TRL's `local_rollout_forward_batch_size`), trained `micro_batch`
    sequences per forward/backward.
    """

    batch: int = 64
    micro_batch: int = 8
    prompt_length: int = 256
    response_length: int = 256
    lora_rank: int = 16
    rollout_chunk: int = 16


def weight_bytes(shape: Shape, dtype: str, four_bit: bool, lm_head: bool = True) -> float:
    """Bytes of one copy of the model: linear layers in nf4 when `four_bit`, the rest in `dtype`."""
    linear = WEIGHT_BYTES["nf4"] if four_bit else WEIGHT_BYTES[dtype]
    return shape.linear_params() * linear + shape.other_params(lm_head) * WEIGHT_BYTES[dtype]


def activation_bytes(shape: Shape, sequences: int, length: int, dtype: str) -> float:
    """Activations one forward keeps for its backward, per model pass (body only; logits counted apart)."""
    per_token_layer = 6 * shape.hidden + 4 * shape.intermediate + 2 * shape.heads * length
    return shape.layers * sequences * length * per_token_layer * WEIGHT_BYTES[dtype]


def estimate(shape: Shape, layout: str, dtype: str, four_bit: bool, work: Workload) -> dict[str, float]:
    """Bytes per component of one PPO update in `layout` ("shared" or "trl"), and their peak sum."""
    if layout not in ("shared", "trl"):
        raise ValueError(f"layout must be 'shared' or 'trl', got {layout!r}")
    length = work.prompt_length + work.response_length
    lora = shape.lora_params(work.lora_rank) * 4.0  # adapters stay fp32
    head = (shape.hidden + 1) * 4.0
    base = weight_bytes(shape, dtype, four_bit)
    parts: dict[str, float] = {}
    if layout == "shared":
        parts["weights"] = base + 4 * lora + 2 * head
        trainable = 2 * lora + head
        parts["gradients"] = trainable
        parts["optimizer"] = ADAM_STATES * trainable
    else:
        # The value model trains in full, so it cannot stay 4-bit: it is held in the compute dtype.
        body = weight_bytes(shape, dtype, four_bit, lm_head=False) + head
        value = weight_bytes(shape, dtype, False, lm_head=False) + head
        parts["weights"] = base + lora + body + value
        parts["gradients"] = lora + value
        parts["optimizer"] = ADAM_STATES * (lora + value)
    act = WEIGHT_BYTES[dtype]
    chunk = min(work.rollout_chunk, work.batch)
    kv_cache = 2 * shape.layers * shape.kv_heads * shape.head_dim * chunk * length * act
    step_logits = work.batch * work.response_length * shape.vocab * 4.0  # TRL keeps every sampled step's logits
    score_logits = 2 * chunk * length * shape.vocab * 4.0  # a scoring forward's logits and log-probs
    parts["rollout"] = kv_cache + step_logits + score_logits
    policy_and_value = 2 * activation_bytes(shape, work.micro_batch, length, dtype)
    parts["training"] = policy_and_value + 3 * work.micro_batch * length * shape.vocab * 4.0
    state = parts["weights"] + parts["gradients"] + parts["optimizer"]
    parts["peak"] = state + max(parts["rollout"], parts["training"])
    return parts


def largest_micro_batch(shape: Shape, layout: str, dtype: str, four_bit: bool, work: Workload, budget: float) -> int:
    """The largest training micro-batch (at most `work.batch`) whose peak fits `budget` bytes; 0 if none does."""
    best = 0
    for micro in (2**k for k in range(int(math.log2(max(work.batch, 1))) + 1)):
        trial = Workload(
            work.batch, micro, work.prompt_length, work.response_length, work.lora_rank, work.rollout_chunk
        )
        if estimate(shape, layout, dtype, four_bit, trial)["peak"] <= budget:
            best = micro
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", required=True, help="Hub id or local directory (config.json only).")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--load_in_4bit", action="store_true", help="nf4 base weights (the shared layout's QLoRA).")
    parser.add_argument("--batch", type=int, default=64, help="Rollouts per update.")
    parser.add_argument("--micro_batch", type=int, default=8, help="Sequences per training forward/backward.")
    parser.add_argument("--prompt_length", type=int, default=256)
    parser.add_argument("--response_length", type=int, default=256)
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--rollout_chunk", type=int, default=16, help="Rollouts sampled and scored at once.")
    parser.add_argument("--gpu_gb", type=float, default=80.0, help="Memory to fit in, GiB.")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    from .modeling import load_model_config

    shape = Shape.from_config(load_model_config(args.model_name_or_path, trust_remote_code=args.trust_remote_code))
    work = Workload(
        args.batch, args.micro_batch, args.prompt_length, args.response_length, args.lora_r, args.rollout_chunk
    )
    budget = args.gpu_gb * GIB
    print(
        f"{args.model_name_or_path}: {shape.params() / 1e9:.2f}B parameters; {args.dtype}"
        f"{', 4-bit base' if args.load_in_4bit else ''}; {work.batch} rollouts of {work.prompt_length}+"
        f"{work.response_length} tokens, micro-batch {work.micro_batch}, LoRA r={work.lora_rank}; "
        f"budget {args.gpu_gb} GiB"
    )
    header = f"{'layout':<8}{'weights':>9}{'grads':>8}{'adam':>8}{'rollout':>9}{'train':>8}{'peak':>8}"
    print(header + "  fits  max micro-batch")
    for layout in ("shared", "trl"):
        parts = estimate(shape, layout, args.dtype, args.load_in_4bit, work)
        micro = largest_micro_batch(shape, layout, args.dtype, args.load_in_4bit, work, budget)
        cells = "".join(
            f"{parts[k] / GIB:>{w}.1f}"
            for k, w in (("weights", 9), ("gradients", 8), ("optimizer", 8), ("rollout", 9), ("training", 8))
        )
        fits = "yes" if parts["peak"] <= budget else "no"
        print(f"{layout:<8}{cells}{parts['peak'] / GIB:>8.1f}  {fits:<4}  {micro or 'none'}")
    print("GiB; allocator and framework overhead not included: keep 10-20% headroom.")


if __name__ == "__main__":
    main()
