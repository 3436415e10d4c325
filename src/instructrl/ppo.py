"""TRL's experimental PPOTrainer (trl 1.12) with what InstructGPT and users need on top.

- PPO-ptx: after each PPO micro-batch's backward and before the optimizer step, `ptx_ratio` x micro-batch pretraining
  sequences are run through the policy and `ptx_coef` x their LM-loss gradient is added to the same gradient
  buffers, in chunks of `ptx_micro_batch_size`, scaled for gradient accumulation like the PPO loss. With several
  processes each draws its own pretraining sequences and the ptx gradient is averaged across them, as DDP averages
  PPO's (DeepSpeed is refused: its engine owns the gradients).
- Gradient clipping at `max_grad_norm` (TRL 1.12's PPO ignores it), on the accumulated PPO + ptx gradient.
- Policy, reference, reward and value as adapters of one base (`instructrl.shared_base.SharedBase`).
- Saving the policy adapter so that `PeftModel.from_pretrained(base, output_dir)` loads it, checkpoints holding the
  value adapter and head too, and resuming from such a checkpoint.

TRL's `train()` is one closed loop with a single `accelerator.backward(loss)` per micro-batch and no hook, so the ptx
term and the clipping are attached by wrapping this trainer's `accelerator.backward`, which that loop calls right
before `optimizer.step()`.
"""

import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch
from accelerate.utils import DistributedType
from transformers import GenerationConfig, TrainerCallback
from trl.experimental.ppo import PPOConfig, PPOTrainer
from trl.experimental.ppo import ppo_trainer as trl_ppo
from trl.models.utils import unwrap_model_for_generation

from .batching import pad_left
from .divergence import check_gradients, check_value
from .errors import ConfigError, DivergenceError
from .evaluation import mean_response_tokens, mean_reward_per_prompt
from .generation import fast_cpu_sampling, sample_responses
from .gold import GoldScorer
from .modeling import compute_dtype, lm_logits_in_model_dtype, lora_bf16_compute
from .ptx import PretrainingStream, predicted_tokens, ptx_loss
from .reward import check_ensemble
from .reward_shaping import (
    LENGTH_CORRECTIONS,
    TRUNCATED_REWARDS,
    LengthCorrection,
    neutralize_truncated,
    shaped_rewards,
)
from .shared_base import POLICY, VALUE, VALUE_HEAD_INITS, SharedBase, logits_from
from .stats import mean_ci, win_rate

logger = logging.getLogger(__name__)

# Share of an update's rollouts that reach `response_length` without the stop token, above which PPO warns once.
TRUNCATION_WARNING_SHARE = 0.1


ROLLOUT_LOGPROBS = ("auto", "forward", "generate")


@contextmanager
def rollout_logprobs_from_forward() -> Iterator[None]:
    """Within this block TRL's PPO loop takes its rollouts' log-probabilities from a forward pass of the policy over
    the sampled sequences (TRL's own `forward`, temperature applied as its training step does) instead of from
    `generate`'s incremental logits. Restored on exit."""
    original = trl_ppo.batch_generation

    @torch.no_grad()
    def batch_generation(model, queries, batch_size, pad_token_id, generation_config):
        query_responses, _ = original(model, queries, batch_size, pad_token_id, generation_config)
        context_length = queries.shape[1]
        logits = []
        for start in range(0, query_responses.shape[0], batch_size):
            chunk = query_responses[start : start + batch_size]
            output = trl_ppo.forward(model, chunk, pad_token_id)
            logits.append(output.logits[:, context_length - 1 : -1] / generation_config.temperature)
        return query_responses, torch.cat(logits)

    with mock.patch.object(trl_ppo, "batch_generation", batch_generation):
        yield


@contextmanager
def response_logits_only() -> Iterator[None]:
    """Within this block TRL's PPO loop runs the policy's and the reference's output layer over the responses only.

    TRL's `forward` returns logits for every position of prompt + response, and every caller in its loop (reference
    and rollout log-probabilities, the training forward) reads them from the prompt's last position on. Here
    `forward` runs under `shared_base.logits_from(prompt width - 1)`, the width taken from the update's
    `batch_generation` call, which precedes the update's forwards (TRL's `context_length` is the same
    `queries.shape[1]`). The value and reward models have no output layer and are unaffected. Restored on exit.
    """
    generation, forward = trl_ppo.batch_generation, trl_ppo.forward
    prompt: dict[str, int] = {}

    def batch_generation(model, queries, *args, **kwargs):
        prompt["width"] = queries.shape[1]
        return generation(model, queries, *args, **kwargs)

    def response_forward(model, query_responses, pad_token_id):
        if "width" not in prompt:
            return forward(model, query_responses, pad_token_id)
        with logits_from(prompt["width"] - 1):
            return forward(model, query_responses, pad_token_id)

    with (
        mock.patch.object(trl_ppo, "batch_generation", batch_generation),
        mock.patch.object(trl_ppo, "forward", response_forward),
    ):
        yield


@dataclass
class InstructPPOConfig(PPOConfig):
    """TRL's `PPOConfig` plus PPO-ptx and the shared-base adapter paths.

    Args:
        sft_model_path (`str`, *optional*):
            SFT adapter directory (`make sft`): initializes the policy and is the frozen KL reference. `None`: fresh
            LoRA policy, reference = base model.
        reward_model_path (`str`):
            Reward-model adapter directory (`make rm`): the frozen reward and the value function's initialization.
        reward_adapters (`list[str]`, *optional*):
            More reward-model outputs (`make rm` with another seed or data) for a conservative ensemble (Coste et al.
            2023): each is attached as one more frozen adapter of the same base, and PPO's reward combines all of them
            with `reward_model_path` by `reward_ensemble`. Unset: the one reward model.
        reward_ensemble (`str`, *optional*, defaults to `"mean_minus_std"`):
            `mean_minus_std` (mean - `reward_ensemble_coef` x standard deviation across members) or `min`.
        reward_ensemble_coef (`float`, *optional*, defaults to `1.0`):
            The standard deviations `mean_minus_std` subtracts.
        ptx_coef (`float`, *optional*, defaults to `0.0`):
            InstructGPT's gamma (27.8 in the paper's PPO-ptx). 0 is plain PPO.
        ptx_ratio (`int`, *optional*, defaults to `8`):
            Pretraining sequences per RL episode in each micro-batch (8 in the paper).
        ptx_dataset_name (`str`, *optional*, defaults to `"builtin:pretraining"`):
            Pretraining text (built-in name, file or Hub id).
        ptx_dataset_split (`str`, *optional*, defaults to `"train"`):
            Its split.
        ptx_text_field (`str`, *optional*, defaults to `"text"`):
            Column holding the text.
        ptx_max_length (`int`, *optional*, defaults to `256`):
            Pretraining sequences are truncated to this many tokens.
        ptx_micro_batch_size (`int`, *optional*, defaults to `8`):
            Pretraining sequences per forward/backward chunk, so that `ptx_ratio` x micro-batch fits in memory.
        score_heldout (`bool`, *optional*, defaults to `True`):
            After training, the reward model scores greedy responses of the reference (SFT) policy and of the trained
            policy to the evaluation prompts: a paired before/after in which, unlike the training curve, every
            policy answers the same prompts, so prompt difficulty does not blur the change.
        heldout_samples (`int`, *optional*, defaults to `0`):
            With `score_heldout`, also score this many responses per evaluation prompt sampled at the rollouts'
            `temperature` (`heldout_rm_score_sampled`, averaged per prompt; both policies sample from the same random
            state). PPO optimizes samples: its greedy answer can stay where SFT's was while its samples gain
            (docs/measurements.md). Costs about as much again as the greedy scoring per sample.
        gold_labeler (`str`, *optional*):
            A labeler from `instructrl.labeler.LABELERS` that also scores every rollout (the gold reward of Gao et al.
            2022), logged as `gold/labeler_score` beside the reward model's `objective/scores`. Unset for your own
            data without a labeler: the gold curve is then absent.
        value_warmup_updates (`int`, *optional*, defaults to `0`):
            Updates at the start in which only the value function trains: the policy (and the ptx term, which only
            moves the policy) waits until the value function, initialized from the reward model, has fitted the
            returns of the SFT policy's rollouts, so that its first advantages are not the value head's errors.
        value_head_init (`str`, *optional*, defaults to `"reward"`):
            Where the value function's head starts (its LoRA adapter always starts from the reward model's).
            `reward`: the reward model's score head, as InstructGPT initializes the value function. `zero`: a head
            of zeros, a value of 0 for every prefix until the value loss has taught it otherwise. The reward model
            scores unfinished text far below finished text, so a value function that starts as the reward model
            sees every response's value jump by about 1 at its end-of-turn token: that token gets a large positive
            advantage in every rollout and PPO learns to stop early (docs/measurements.md, "the value function pays for
            stopping").
        rollout_logprobs (`str`, *optional*, defaults to `"auto"`):
            Where a rollout's log-probabilities (the "old" ones of PPO's ratio, and the policy's side of the KL
            penalty) come from. `generate`: TRL's own, the sampling step's logits, computed incrementally with a KV
            cache. `forward`: one more forward pass of the policy over the sampled sequences, the computation the
            training step repeats, so that an unchanged policy has a ratio of exactly 1 and a KL of 0 to itself.
            `auto`: `forward` when the model computes in bf16 or fp16, where the two paths round differently by about
            as much as one update moves the policy; `generate` in fp32, where they agree.
        truncated_reward (`str`, *optional*, defaults to `"score"`):
            The reward of a rollout cut off at `response_length` before its stop token. `score`: the reward model's
            score of the unfinished text (TRL's behaviour; `missing_eos_penalty` is subtracted either way).
            `neutral`: the mean score of the rollouts of the same scoring batch that ended, so that being cut off
            teaches nothing through the reward model. The RM scores unfinished answers far below finished ones, one
            reason PPO learns to stop early on every prompt, its greedy answers included; on the default, `neutral`
            kept the answers' length in one of two data draws (docs/measurements.md, "PPO shortens every answer").
            Needs `stop_token`.
        length_correction (`str`, *optional*, defaults to `"none"`):
            `none`: PPO's reward is the reward model's score. `sft`: before training, the SFT policy samples
            `length_correction_samples` responses to each of the first `length_correction_prompts` training prompts,
            the reward model scores them, and the slope of its score on response length within a prompt is taken out
            of every finished rollout's score (`instructrl.reward_shaping.LengthCorrection`), so that PPO is not
            paid for length itself, the shortcut a small reward model learns (docs/measurements.md). The fit is
            recorded in `ppo_summary.json` (`length_correction`). Needs `stop_token`.
        length_correction_prompts (`int`, *optional*, defaults to `64`):
            Training prompts the length slope is fitted on.
        length_correction_samples (`int`, *optional*, defaults to `4`):
            SFT samples per prompt for the fit (at least 2: the slope is measured within a prompt).
        max_kl (`float`, *optional*):
            Stop training (`DivergenceError`, stage left interrupted, last checkpoint kept) once an update's rollouts
            are further than this from the reference (TRL's `objective/kl`, nats per response). Unset: no ceiling.
        train_top_layers (`int`, *optional*):
            Train the policy's and the value's LoRA weights in the top N transformer layers only (the lower layers
            keep the SFT adapter's and the reward adapter's weights): back-propagation, of the PPO and of the ptx loss,
            stops below them. `None` (the default) trains every layer the adapters have.
        lora_bf16_compute (`bool`, *optional*, defaults to `False`):
            On a bf16 base, run the policy's, value's and reward's LoRA arithmetic in bf16 through the whole of
            training (sampling, scoring, PPO and ptx passes; `instructrl.modeling.lora_bf16_compute`), the adapters'
            weights, the logits and the scalar heads staying fp32. Nothing changes on an fp32 or 4-bit base.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Run code shipped with the model. Off unless the user turns it on.
    """

    sft_model_path: str | None = field(default=None, metadata={"help": "SFT adapter directory (make sft)."})
    reward_model_path: str | None = field(default=None, metadata={"help": "Reward adapter directory (make rm)."})
    reward_adapters: list[str] | None = field(
        default=None, metadata={"help": "More reward-model outputs: PPO's reward is their conservative ensemble."}
    )
    reward_ensemble: str = field(default="mean_minus_std", metadata={"help": "mean_minus_std or min."})
    reward_ensemble_coef: float = field(default=1.0, metadata={"help": "Std. deviations mean_minus_std subtracts."})
    ptx_coef: float = field(default=0.0, metadata={"help": "InstructGPT's gamma; 0 is plain PPO."})
    ptx_ratio: int = field(default=8, metadata={"help": "Pretraining sequences per RL episode."})
    ptx_dataset_name: str | None = field(default="builtin:pretraining", metadata={"help": "Pretraining text."})
    ptx_dataset_split: str = field(default="train", metadata={"help": "Split of the pretraining data."})
    ptx_text_field: str = field(default="text", metadata={"help": "Column holding the pretraining text."})
    ptx_max_length: int = field(default=256, metadata={"help": "Truncate pretraining sequences to this length."})
    ptx_micro_batch_size: int = field(default=8, metadata={"help": "Pretraining sequences per backward chunk."})
    score_heldout: bool = field(
        default=True, metadata={"help": "RM-score greedy responses to the eval prompts before and after training."}
    )
    heldout_samples: int = field(
        default=0, metadata={"help": "Also RM-score this many sampled responses per eval prompt (0: greedy only)."}
    )
    gold_labeler: str | None = field(
        default=None, metadata={"help": "Labeler that also scores every rollout (gold reward); unset: none."}
    )
    value_warmup_updates: int = field(
        default=0, metadata={"help": "Updates at the start that train the value function only (policy frozen)."}
    )
    value_head_init: str = field(
        default="reward", metadata={"help": "reward or zero: where the value function's head starts."}
    )
    rollout_logprobs: str = field(
        default="auto", metadata={"help": "generate, forward or auto (forward when computing in bf16/fp16)."}
    )
    truncated_reward: str = field(
        default="score", metadata={"help": "score or neutral: the reward of a rollout cut off at response_length."}
    )
    length_correction: str = field(
        default="none", metadata={"help": "none or sft: take the RM's length preference, fitted on SFT samples, out."}
    )
    length_correction_prompts: int = field(default=64, metadata={"help": "Training prompts the length fit uses."})
    length_correction_samples: int = field(default=4, metadata={"help": "SFT samples per prompt for the length fit."})
    max_kl: float | None = field(
        default=None, metadata={"help": "Stop when the rollouts' KL to the reference exceeds this; unset: never."}
    )
    lora_bf16_compute: bool = field(
        default=False, metadata={"help": "LoRA arithmetic in bf16 on a bf16 base (logits and heads stay fp32)."}
    )
    train_top_layers: int | None = field(
        default=None, metadata={"help": "Train the policy's and value's LoRA in the top N layers only."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Run code shipped with the model."})

    def __post_init__(self):
        super().__post_init__()
        check_ensemble(self.reward_ensemble, self.reward_ensemble_coef)
        checks = (
            ("ptx_coef", 0),
            ("ptx_ratio", 0),
            ("ptx_micro_batch_size", 1),
            ("value_warmup_updates", 0),
            ("heldout_samples", 0),
            ("length_correction_prompts", 1),
            ("length_correction_samples", 2),
        )
        for name, low in checks:
            value = getattr(self, name)
            if not value >= low:  # also refuses NaN
                raise ConfigError(f"`{name}` is {value} but must be >= {low}. Fix it in the config or command line.")
        if self.total_episodes is not None and self.value_warmup_updates > 0:
            self.check_value_warmup(math.ceil(self.total_episodes / self.episodes_per_update()))
        if self.rollout_logprobs not in ROLLOUT_LOGPROBS:
            raise ConfigError(
                f"`rollout_logprobs` is {self.rollout_logprobs!r}; choose one of {', '.join(ROLLOUT_LOGPROBS)}."
            )
        if self.truncated_reward not in TRUNCATED_REWARDS:
            raise ConfigError(
                f"`truncated_reward` is {self.truncated_reward!r}; choose one of {', '.join(TRUNCATED_REWARDS)}."
            )
        if self.value_head_init not in VALUE_HEAD_INITS:
            raise ConfigError(
                f"`value_head_init` is {self.value_head_init!r}; choose one of {', '.join(VALUE_HEAD_INITS)}."
            )
        if self.length_correction not in LENGTH_CORRECTIONS:
            raise ConfigError(
                f"`length_correction` is {self.length_correction!r}; choose one of {', '.join(LENGTH_CORRECTIONS)}."
            )
        no_stop = self.stop_token is None and self.stop_token_id is None
        for name, value in (("truncated_reward", "neutral"), ("length_correction", "sft")):
            if getattr(self, name) == value and no_stop:
                raise ConfigError(
                    f"`{name}: {value}` needs a stop token to tell finished rollouts from cut-off ones: set "
                    "`stop_token: eos` (or `stop_token_id`)."
                )
        if self.train_top_layers is not None and not self.train_top_layers >= 1:
            raise ConfigError(
                f"`train_top_layers: {self.train_top_layers}` counts the layers PPO trains from the top: use 1 or "
                "more, or null to train every layer."
            )
        if self.max_kl is not None and not self.max_kl > 0:
            raise ConfigError(f"`max_kl` is {self.max_kl} but must be > 0 (or unset for no ceiling).")

    def episodes_per_update(self) -> int:
        """TRL's `batch_size`: episodes of one update over all processes (`WORLD_SIZE` under `accelerate launch`)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * world_size

    def check_value_warmup(self, updates: int) -> None:
        if self.value_warmup_updates >= updates:
            raise ConfigError(
                f"`value_warmup_updates` is {self.value_warmup_updates} but this run has {updates} updates, which "
                "leaves no update for the policy. Lower it or raise `total_episodes`."
            )


class ContinuedBatches:
    """TRL's endless pass over `dataloader` (reshuffled every epoch), minus its first `skip` batches.

    The prompt order comes from the dataloader's seeded shuffle, so a run resumed after `skip` updates gets the
    batches the interrupted run had not reached, instead of starting again at the first prompts.
    """

    def __init__(self, dataloader, skip: int):
        self.dataloader = dataloader
        self._batches = self._endless()
        for _ in range(skip):
            next(self._batches)

    def _endless(self):
        while True:
            yield from self.dataloader

    def __iter__(self):
        return self._batches

    def __len__(self) -> int:
        return len(self.dataloader)


class ContinuedCounters(TrainerCallback):
    """After a resume, count updates and episodes on from the checkpoint's (TRL's `train()` starts them at 0) and
    keep the checkpoint's log before the new entries.

    So a resumed run's checkpoints are numbered after the ones it resumed from (the newest checkpoint is the latest
    state, as `instructrl.runs.latest_complete_checkpoint` assumes), its log continues the episode axis, and its
    `log_history.json`, `ppo_summary.json` trend and report plots cover the whole run, not only the part after the
    resume.
    """

    def __init__(self, updates: int, episodes: int, log_history: list[dict] | None = None):
        self.updates, self.episodes = updates, episodes
        self.log_history = list(log_history or [])

    def on_train_begin(self, args, state, control, **kwargs):
        state.global_step += self.updates
        state.episode += self.episodes
        state.max_steps += self.updates
        state.log_history[:0] = self.log_history


class InstructPPOTrainer(PPOTrainer):
    """`PPOTrainer` over a `SharedBase`, with the ptx loss hook, gradient clipping, saving and resuming.

    Args:
        shared (`SharedBase`):
            The base with its four adapters; the trainer takes policy, reference, reward and value from it.
        ptx_stream (`PretrainingStream`, *optional*):
            Pretraining batches; required when `args.ptx_coef > 0`.
        gold_scorer (`GoldScorer`, *optional*):
            Scores each update's rollouts with a labeler, logged as `gold/labeler_score`.
        Other arguments are `PPOTrainer`'s.
    """

    def __init__(
        self,
        args: InstructPPOConfig,
        shared: SharedBase,
        ptx_stream: PretrainingStream | None = None,
        gold_scorer: GoldScorer | None = None,
        **kwargs,
    ):
        if args.ptx_coef > 0 and ptx_stream is None:
            raise ConfigError("`ptx_coef > 0` needs pretraining data: set `ptx_dataset_name`.")
        self.shared = shared
        self.ptx_stream = ptx_stream
        self._ptx_stats: dict[str, list[float]] = defaultdict(list)
        self.gold_scorer = gold_scorer
        self._warned_truncation = False
        self.length_correction: LengthCorrection | None = None  # fitted at the start of `train` (`length_correction`)
        reward_model = shared.reward_model()
        if gold_scorer is not None:
            gold_scorer.tap(reward_model)
        super().__init__(
            args=args,
            model=shared.policy(),
            ref_model=shared.reference(),
            reward_model=reward_model,
            value_model=shared.value_model(),
            **kwargs,
        )
        args.check_value_warmup(args.num_total_batches)  # the number TRL derived (total_episodes may be unset)
        if ptx_stream is not None:
            # One pretraining stream per process, like the prompts: every process draws different sequences.
            ptx_stream.reseed(args.seed + self.accelerator.process_index)
        if args.ptx_coef > 0 and self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise ConfigError(
                "PPO-ptx (`ptx_coef > 0`) adds its gradient outside DeepSpeed's engine and is not supported with "
                "DeepSpeed. Launch with DDP (`accelerate launch --multi_gpu`) or set `ptx_coef: 0`."
            )
        self._ppo_backward = self.accelerator.backward
        self.accelerator.backward = self._backward_with_ptx_and_clipping

    def train(self, *args, **kwargs):
        with ExitStack() as stack:
            # TRL samples every rollout with `generate(do_sample=True)`: single multinomial draws, cheap on CPU so.
            stack.enter_context(fast_cpu_sampling())
            if self.args.length_correction == "sft":  # before any patch below: it samples and scores as TRL does
                self.length_correction = self.fit_length_correction()
            # Sampling, scoring and training all in it, so rollout and training log-probabilities share arithmetic.
            stack.enter_context(lora_bf16_compute(self.shared.shared, self.args.lora_bf16_compute))
            stack.enter_context(response_logits_only())  # before the rollout patch below, which calls `forward`
            if self.rollout_logprobs_source() == "forward":
                stack.enter_context(rollout_logprobs_from_forward())
            shaping = self.reward_shaping()
            if shaping is not None:
                stack.enter_context(shaped_rewards(self.reward_model, shaping))
            return super().train(*args, **kwargs)

    def reward_shaping(self):
        """What happens to the reward model's scores of a rollout batch before PPO reads them (`truncated_reward`,
        `length_correction`), as one function of (scores, responses); `None` when they are used as they are."""
        neutral = self.args.truncated_reward == "neutral"
        correction = self.length_correction
        if not neutral and correction is None:
            return None
        stop = self.stop_token_id

        def shape(scores: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
            if neutral:  # first: the mean it gives cut-off rollouts is of the finished ones' own scores
                scores = neutralize_truncated(scores, responses, stop)
            if correction is not None:
                scores = correction.apply(scores, responses, stop)
            return scores

        return shape

    @torch.no_grad()
    def fit_length_correction(self) -> LengthCorrection:
        """Fit `length_correction: sft` on the reference (SFT) policy's samples: `length_correction_samples` per
        prompt for the first `length_correction_prompts` training prompts, sampled and scored exactly as rollouts
        are (TRL's generation at the rollouts' temperature, truncation at the stop token, `get_reward`), from a
        random state of its own (`seed`), so the training rollouts that follow are the same with or without it and a
        resumed run fits the same correction."""
        args, pad = self.args, self.processing_class.pad_token_id
        count = min(args.length_correction_prompts, len(self.train_dataset))
        prompts = [self.train_dataset[i]["input_ids"] for i in range(count)]
        queries, _ = pad_left(prompts, pad)
        width = queries.shape[1]
        device = self.accelerator.device
        queries = queries.repeat_interleave(args.length_correction_samples, dim=0).to(device)
        generation_config = GenerationConfig(
            max_new_tokens=args.response_length,
            temperature=args.temperature + 1e-7,
            top_k=0,
            top_p=1.0,
            do_sample=True,
        )
        batch = args.local_rollout_forward_batch_size
        scores, responses = [], []
        forked = [device] if device.type == "cuda" else []
        with (
            unwrap_model_for_generation(
                self.model, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation
            ),
            torch.random.fork_rng(devices=forked),
        ):
            torch.manual_seed(args.seed)
            for start in range(0, len(queries), batch):
                chunk = queries[start : start + batch]
                query_responses, _ = trl_ppo.batch_generation(self.ref_model, chunk, batch, pad, generation_config)
                response = trl_ppo.truncate_response(self.stop_token_id, pad, query_responses[:, width:])
                # generate stops once every row has ended: pad the chunks to one width
                response = torch.nn.functional.pad(response, (0, args.response_length - response.shape[1]), value=pad)
                _, score, _ = trl_ppo.get_reward(self.reward_model, torch.cat((chunk, response), 1), pad, width)
                scores.append(score.float().reshape(-1).cpu())
                responses.append(response.cpu())
        correction = LengthCorrection.fit(
            torch.cat(scores), torch.cat(responses), self.stop_token_id, args.length_correction_samples
        )
        logger.info(
            "Length correction fitted on %d SFT samples (%d finished, mean %.1f tokens): %+.4f ± %.4f reward per "
            "token within a prompt, taken out of every finished rollout's score",
            correction.samples,
            correction.finished,
            correction.reference_tokens,
            correction.slope,
            correction.ci95,
        )
        return correction

    def rollout_logprobs_source(self) -> str:
        """`generate` or `forward`: `rollout_logprobs`, with `auto` decided by the base model's compute dtype."""
        if self.args.rollout_logprobs != "auto":
            return self.args.rollout_logprobs
        return "generate" if compute_dtype(self.shared.shared) == torch.float32 else "forward"

    # -- the hook -------------------------------------------------------------------------------------------------
    def _backward_with_ptx_and_clipping(self, loss: torch.Tensor, **kwargs) -> None:
        where = f"update {self.state.global_step + 1}"
        check_value("the PPO loss", loss.detach(), where)
        self._ppo_backward(loss, **kwargs)
        if self.value_warming_up():
            for param in self.shared.adapter_parameters(POLICY):
                param.grad = None  # AdamW skips a parameter without a gradient: no step, no decay, no state
        elif self.args.ptx_coef > 0 and self.args.ptx_ratio > 0:
            check_value("the ptx LM loss", self.ptx_backward(self.ptx_sequences_per_micro_batch()), where)
        if not self.accelerator.sync_gradients:
            return
        # The last chance before TRL's loop calls optimizer.step(): a NaN must not reach the weights.
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            norm = self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)
            self._ptx_stats["grad_norm"].append(float(norm))
        check_gradients(params, where)

    def value_warming_up(self) -> bool:
        """Whether this update trains the value function only (`value_warmup_updates`)."""
        return self.state.global_step < self.args.value_warmup_updates

    def ptx_backward(self, num_sequences: int) -> float:
        """Add `ptx_coef` x the policy's LM-loss gradient on `num_sequences` pretraining sequences to the gradients.

        The sequences are run in chunks of `ptx_micro_batch_size`, each chunk's loss normalized by the whole batch's
        token count, so the gradient is that of one batch however it is chunked. It is scaled like the PPO loss
        (gradient accumulation, fp16 loss scaling) and, with several processes, averaged across them as DDP averages
        PPO's gradient: each process draws its own pretraining sequences, so the ptx batch grows with the number of
        processes as the PPO batch does. Returns this process's (unscaled) LM loss.
        """
        input_ids, attention_mask = self.ptx_stream.next_batch(num_sequences)
        total_tokens = predicted_tokens(attention_mask)
        policy = self.accelerator.unwrap_model(self.model).policy
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads: dict[int, torch.Tensor] = {}  # index in `params` -> summed gradient (frozen-in-graph ones stay out)
        device = self.accelerator.device
        total = 0.0
        for start in range(0, num_sequences, self.args.ptx_micro_batch_size):
            ids = input_ids[start : start + self.args.ptx_micro_batch_size].to(device)
            mask = attention_mask[start : start + self.args.ptx_micro_batch_size].to(device)
            with lm_logits_in_model_dtype():  # a language-modelling loss: bf16 logits are precise enough
                logits = policy(input_ids=ids, attention_mask=mask, use_cache=False).logits
            lm_loss = ptx_loss(logits, ids, mask, num_tokens=total_tokens)
            total += lm_loss.item()
            # `accelerator.backward` divides the PPO loss by the accumulation steps; the ptx term must match.
            scaled = self.args.ptx_coef * lm_loss / self.accelerator.gradient_accumulation_steps
            if self.accelerator.scaler is not None:
                scaled = self.accelerator.scaler.scale(scaled)
            # autograd.grad, not backward: the gradient stays out of DDP's reduction hooks and is averaged below.
            for i, grad in enumerate(torch.autograd.grad(scaled, params, allow_unused=True)):
                if grad is not None:
                    grads[i] = grads[i] + grad if i in grads else grad
        if grads and self.accelerator.num_processes > 1:
            flat = self.accelerator.reduce(torch.cat([g.flatten() for g in grads.values()]), reduction="mean")
            parts = flat.split([g.numel() for g in grads.values()])
            grads = {i: part.view_as(g) for (i, g), part in zip(grads.items(), parts, strict=True)}
        for i, grad in grads.items():
            p = params[i]
            p.grad = grad.to(p.dtype) if p.grad is None else p.grad.add_(grad.to(p.grad.dtype))
        self._ptx_stats["ptx/lm_loss"].append(total)
        self._ptx_stats["ptx/tokens"].append(float(total_tokens))
        return total

    def ptx_micro_batch_shape(self) -> tuple[int, int]:
        """(episodes in one PPO micro-batch, micro-batches per mini-batch), as TRL's loop slices them.

        TRL splits an update's episodes into mini-batches of `local_mini_batch_size` (which its `__init__` derives)
        and each mini-batch into slices of `per_device_train_batch_size`, so with several mini-batches a micro-batch
        can be smaller than `per_device_train_batch_size`.
        """
        mini = self.args.local_mini_batch_size
        size = min(self.args.per_device_train_batch_size, mini)
        return size, math.ceil(mini / size)

    def ptx_sequences_per_micro_batch(self) -> int:
        """`ptx_ratio` pretraining sequences per episode of a PPO micro-batch."""
        return self.args.ptx_ratio * self.ptx_micro_batch_shape()[0]

    def ptx_sequences_per_update(self) -> int:
        """Pretraining sequences one update draws: those of every micro-batch it back-propagates."""
        args = self.args
        micro_batches = args.num_ppo_epochs * args.num_mini_batches * self.ptx_micro_batch_shape()[1]
        return micro_batches * self.ptx_sequences_per_micro_batch() if args.ptx_coef > 0 else 0

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        kl = logs.get("objective/kl")
        if kl is not None and self.args.max_kl is not None and not kl <= self.args.max_kl:
            # Raised before TRL's loop saves this update: the last checkpoint is the last one within the ceiling.
            raise DivergenceError(
                f"The policy's KL to the reference reached {kl:.3g} nats at update {self.state.global_step}, above "
                f"`max_kl` {self.args.max_kl}. Raise `kl_coef` or lower the learning rate (or raise `max_kl`); "
                "checkpoints written before this update are kept."
            )
        self._log_truncation(logs)
        for key, values in self._ptx_stats.items():
            if values:
                logs[key] = sum(values) / len(values) if key != "ptx/tokens" else sum(values)
        self._ptx_stats.clear()
        if self.gold_scorer is not None and "objective/scores" in logs:
            # Every process scores its own rollouts; the logged value is the mean over all of them, like TRL's.
            gold = torch.tensor(self.gold_scorer.pop_scores() or [float("nan")], device=self.accelerator.device)
            logs["gold/labeler_score"] = self.accelerator.gather_for_metrics(gold.nanmean()).nanmean().item()
        super().log(logs, start_time)

    def _log_truncation(self, logs: dict[str, float]) -> None:
        """Log the share of this process's rollouts cut off at `response_length`; warn once when it is large.

        A rollout that does not end loses `missing_eos_penalty` whatever its content, so a `response_length` shorter
        than the answers the instructions ask for teaches the policy to stop early everywhere.
        """
        ended = logs.get("val/num_eos_tokens")
        if ended is None or self.stop_token_id is None or self.stop_token_id != self.processing_class.eos_token_id:
            return
        share = max(0.0, 1.0 - ended / self.args.local_batch_size)
        logs["rollouts/truncated_share"] = share
        if share >= TRUNCATION_WARNING_SHARE and not self._warned_truncation:
            self._warned_truncation = True
            penalty = self.args.missing_eos_penalty
            cost = f" and lost `missing_eos_penalty` ({penalty:g}) from their reward" if penalty else ""
            logger.warning(
                f"{share:.0%} of update {self.state.global_step}'s rollouts reached `response_length` "
                f"({self.args.response_length} tokens) without ending{cost}. If your instructions ask for longer "
                "answers, raise `response_length`, or PPO learns to stop early on every prompt."
            )

    # -- held-out reward -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def heldout_responses(self, prompts: list, which: str = "policy", samples: int = 0) -> list[list[str]]:
        """The `which` ("policy" or "reference") policy's greedy response to each of `prompts`, or with `samples`,
        that many responses per prompt sampled at the rollouts' temperature.

        Greedy, so that two policies' responses to the same prompts differ only because the policies do; sampled,
        every call starts from the same random state (`seed`) for the same reason. Responses are at most
        `response_length` tokens and stop at the end-of-turn token. Prompts are processed
        `per_device_eval_batch_size` at a time.
        """
        # As TRL's rollout does: unwrapped (and under ZeRO-3 gathered) for generation. The reference view shares the
        # policy's base module, so gathering the policy's parameters covers it too.
        with unwrap_model_for_generation(
            self.model, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation
        ) as unwrapped:
            model = unwrapped.policy if which == "policy" else self.ref_model
            was_training = model.training
            model.eval()
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.args.seed)
                    return sample_responses(
                        model,
                        self.processing_class,
                        prompts,
                        num_samples=max(samples, 1),
                        max_new_tokens=self.args.response_length,
                        temperature=self.args.temperature,
                        batch_size=self.args.per_device_eval_batch_size,
                        do_sample=samples > 0,
                    )
            finally:
                model.train(was_training)

    def heldout_rm_scores(self, prompts: list, which: str = "policy", samples: int = 0) -> list[float]:
        """Reward-model score of each prompt's `heldout_responses` (the mean over a prompt's samples), read where PPO
        reads the reward."""
        responses = self.heldout_responses(prompts, which, samples)
        return self._mean_reward(prompts, responses)

    def _mean_reward(self, prompts: list, responses: list[list[str]]) -> list[float]:
        batch_size = self.args.per_device_eval_batch_size
        return mean_reward_per_prompt(self.reward_model, self.processing_class, prompts, responses, batch_size)

    def score_heldout(self, prompts: list, samples: int = 0) -> dict:
        """Reference (SFT) against trained policy on `prompts`, paired by prompt; also logged at the last step.

        Greedy responses, or with `samples`, the mean of that many sampled ones per prompt (`heldout_responses`);
        the sampled scores are logged under `heldout/sampled_*`. Besides the scores, the mean length of each policy's
        responses in tokens (`response_tokens`): PPO that learns to stop early shows there first.
        """
        if self.gold_scorer is not None:
            self.gold_scorer.recording = False  # held-out answers are not rollouts
        responses = {which: self.heldout_responses(prompts, which, samples) for which in ("reference", "policy")}
        before, after = (self._mean_reward(prompts, responses[which]) for which in ("reference", "policy"))
        change = {
            "prompts": len(prompts),
            "reference": mean_ci(before),
            "policy": mean_ci(after),
            "change": mean_ci([a - b for a, b in zip(after, before, strict=True)]),
            "win_rate": win_rate(after, before),
            "response_tokens": {
                which: mean_response_tokens(self.processing_class, r) for which, r in responses.items()
            },
        }
        prefix = "heldout/sampled_" if samples else "heldout/"
        self.log(
            {
                f"{prefix}rm_score_reference": change["reference"]["mean"],
                f"{prefix}rm_score": change["policy"]["mean"],
                f"{prefix}win_rate": change["win_rate"]["rate"],
                f"{prefix}response_tokens_reference": change["response_tokens"]["reference"],
                f"{prefix}response_tokens": change["response_tokens"]["policy"],
            }
        )
        return change

    # -- saving and resuming --------------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        output_dir = output_dir or self.args.output_dir
        if self.accelerator.is_main_process:
            self.shared.save_adapter("policy", output_dir)
            self.shared.save_value(Path(output_dir) / VALUE)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)

    def resume_from(self, checkpoint: str | Path) -> int:
        """Load weights, optimizer, scheduler and random state from a checkpoint; return its completed updates.

        TRL's loop always starts at update 1, so the remaining updates are run by shortening `num_total_batches`,
        and its prompt batches and pretraining sequences continue where the interrupted run stopped. The random state
        is restored last, after the skipped batches drew their shuffle from the same state as the interrupted run's
        did, so within the first pass over the prompts the resumed run samples exactly what the uninterrupted run
        would have (later passes reshuffle from the random state of the moment, so they differ).
        """
        checkpoint = Path(checkpoint)
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        done = int(state["global_step"])
        self.shared.load_trainable(checkpoint)
        self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
        self.args.num_total_batches = max(self.args.num_total_batches - done, 0)
        self.add_callback(ContinuedCounters(done, done * self.args.batch_size, state.get("log_history")))
        self.dataloader = ContinuedBatches(self.dataloader, skip=done)
        if self.ptx_stream is not None:
            self.ptx_stream.skip(done * self.ptx_sequences_per_update())
        self._load_rng_state(str(checkpoint))
        logger.info("Resumed from %s after %d updates; %d updates left", checkpoint, done, self.args.num_total_batches)
        return done
