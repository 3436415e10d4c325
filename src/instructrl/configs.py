"""Argument dataclasses shared by the recipes, and a parser that turns YAML mistakes into one clear error."""

import difflib
import logging
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import trl
import yaml
from trl import TrlParser

from .errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class ScriptArguments(trl.ScriptArguments):
    """TRL's script arguments plus the evaluation set and sample caps.

    Args:
        eval_dataset_name (`str`, *optional*):
            Evaluation data (built-in name, file, directory or Hub id). Defaults to `dataset_name` with
            `dataset_test_split`; no evaluation if that split does not exist.
        max_train_samples (`int`, *optional*):
            Use only the first N training rows (quick runs).
        max_eval_samples (`int`, *optional*):
            Use only the first N evaluation rows.
    """

    dataset_name: str | None = field(default="builtin:demonstrations", metadata={"help": "Training data."})
    eval_dataset_name: str | None = field(default=None, metadata={"help": "Evaluation data; see the docstring."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})


def parse_args(dataclass_types: tuple[type, ...], args: list[str] | None = None) -> tuple:
    """Parse `--config x.yaml` plus command-line overrides into the given dataclasses.

    Unknown YAML keys, a missing config file, a YAML that is not a mapping and a value of the wrong type
    (`learning_rate: abc`) raise `ConfigError` naming the key (with the closest known key) or the file.
    """
    argv = list(args) if args is not None else sys.argv[1:]
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise ConfigError("`--config` needs a YAML file path after it.")
        check_config_file(argv[index + 1], dataclass_types)
    if any(f.name == "bf16" for cls in dataclass_types for f in fields(cls)):
        argv = argv + cpu_precision_override(argv)
    parser = RecipeParser(dataclass_types)
    return parser.parse_args_and_config(argv)


class RecipeParser(TrlParser):
    """TrlParser whose argument errors are a `ConfigError`, not argparse's full usage text followed by the error."""

    def error(self, message: str):
        raise ConfigError(f"{message}. Fix it in the config file or on the command line (`--help` lists settings).")


def cpu_precision_override(argv: list[str]) -> list[str]:
    """TRL's configs default to bf16, which transformers refuses without a GPU: turn it off on CPU-only machines."""
    if torch.cuda.is_available() or "--bf16" in argv:
        return []
    logger.info("No CUDA device: training in fp32 (bf16=false).")
    return ["--bf16", "false"]


def check_config_file(path: str, dataclass_types: tuple[type, ...]) -> dict:
    """Read a YAML config and raise `ConfigError` for a wrong path, bad YAML, or keys no dataclass knows."""
    config_path = Path(path).expanduser()
    if not config_path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist. Check the path given to `--config`.")
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file '{path}' is not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise ConfigError(f"Config file '{path}' must be a YAML mapping of `key: value` lines.")
    known = {f.name for cls in dataclass_types for f in fields(cls)} | {"env"}
    unknown = [key for key in config if key not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ConfigError(f"Unknown key(s) in config file '{path}': {', '.join(hints)}. Fix or remove them.")
    return config


def expand_path(path: str | None) -> str | None:
    """Expand `~` and environment variables in a path taken from YAML."""
    return None if path is None else os.path.expandvars(os.path.expanduser(path))


@dataclass
class RewardScriptArguments(ScriptArguments):
    """Script arguments of the reward-model stage.

    Args:
        dataset_name (`str`):
            Comparisons: a directory written by `recipes/collect.py` (its `rankings/`), or any data set in either the
            ranking format (prompt, responses, scores) or TRL's pair format (prompt, chosen, rejected).
        normalization_dataset_name (`str`, *optional*, defaults to `"builtin:demonstrations"`):
            SFT demonstrations (prompt/completion) whose mean reward the saved bias sets to 0.
        normalization_samples (`int`, *optional*, defaults to `256`):
            How many demonstrations to score for the bias.
        flip_probe (`str`, *optional*):
            The instruction-flip probe written by `recipes/collect.py` (`probes/flip.jsonl`): after training, the
            share of its orders the model gets right is reported as `eval_flip_probe_accuracy`.
        init_adapter (`str`, *optional*):
            A LoRA adapter (the SFT stage's output) whose weights the reward model's adapter starts from, as
            InstructGPT starts its reward model from the SFT model; its rank, alpha and target modules replace the
            `lora_*` settings. `None` starts from the base model (a fresh adapter). A reward model's output (`make rm`)
            works too: its trained score head is copied as well, so training continues that reward model on new
            comparisons (InstructGPT's iterated collection; docs/measurements.md, 2026-12-07 06:00).
        length_decorrelation (`float`, *optional*, defaults to `0.0`):
            Adds this times the square of the rewards' correlation with response length within each prompt's
            responses (`instructrl.reward.within_group_length_correlation`) to the ranking loss, so that the reward
            does not prefer shorter (or longer) answers across the board; over the finished responses only where the
            rankings record which ended (`make collect`'s `finished`). 0 leaves the loss as InstructGPT's.
        share_prompt (`bool`, *optional*, defaults to `True`):
            Run each prompt once for all of its ranked responses in training (its keys and values shared by them),
            not once per response: the same rewards and gradients to float rounding in ~1/3 fewer tokens on the
            default's rankings (`instructrl.reward.sequence_rewards`). Off, or where the model does not allow it (no
            key/value cache input, attention other than eager/SDPA, gradient checkpointing, several processes), every
            sequence runs whole.
        lora_bf16_compute (`bool`, *optional*, defaults to `False`):
            Where the base model is bf16, run the LoRA adapters' arithmetic in training in bf16 too (autocast, their
            weights and the score head staying fp32: `instructrl.modeling.lora_bf16_compute`), as mixed precision on
            a GPU does, instead of PEFT's fp32 path around every adapted layer: 1.25x faster steps on a 2-core Xeon
            with AMX (`bench/rm_step.py`). Off by default until its effect on the RM's accuracy is measured. No
            effect on an fp32 or 4-bit base.
        train_top_layers (`int`, *optional*):
            Train the adapter's LoRA weights in the top N transformer layers only (and the score head, always): the
            lower layers keep their starting values (the SFT adapter's, with `init_adapter`) and back-propagation
            stops below layer N from the top, which shortens the backward pass (`instructrl.reward.train_top_layers`).
            `None` trains every layer the adapter has. The default recipe trains the top 15 of SmolLM2's 30: a
            faster step and, on two collections, a more accurate RM (docs/measurements.md, 2026-12-06 17:25).
        replay_dataset_name (`str`, *optional*):
            Comparisons of an earlier collection (its `rankings`) to train on beside `dataset_name`'s, when the RM
            continues from an earlier reward model (`init_adapter`) on comparisons of the current policy's samples
            (InstructGPT's iterated collection): the continued RM keeps seeing where the earlier policy was. Its
            `dataset_train_split` only; the evaluation split stays `dataset_name`'s. The iterated pipeline
            (`pipeline_iterated.yaml`) fills it in with the rankings the earlier reward model trained on.
        replay_rankings (`int`, *optional*):
            How many rows of `replay_dataset_name` join, drawn at random with `seed`; `None` takes as many as
            `dataset_name`'s training rows (all of them if it has fewer).
    """

    dataset_name: str | None = field(default=None, metadata={"help": "Comparisons (rankings or pairs)."})
    flip_probe: str | None = field(default=None, metadata={"help": "Instruction-flip probe (probes/flip.jsonl)."})
    init_adapter: str | None = field(default=None, metadata={"help": "Adapter to start from (SFT or an RM)."})
    normalization_dataset_name: str | None = field(default="builtin:demonstrations")
    normalization_samples: int = field(default=256)
    length_decorrelation: float = field(default=0.0)
    share_prompt: bool = field(default=True, metadata={"help": "Each prompt once for all its responses."})
    lora_bf16_compute: bool = field(default=False, metadata={"help": "LoRA arithmetic in bf16 on a bf16 base."})
    train_top_layers: int | None = field(default=None, metadata={"help": "Train LoRA in the top N layers only."})
    replay_dataset_name: str | None = field(default=None, metadata={"help": "Earlier comparisons to train on too."})
    replay_rankings: int | None = field(default=None, metadata={"help": "How many of them (null: as many as new)."})

    def __post_init__(self):
        if self.train_top_layers is not None and self.train_top_layers < 0:
            raise ConfigError(
                f"`train_top_layers: {self.train_top_layers}` counts layers from the top: use 0 (the score head "
                "only) or more, or null to train every layer."
            )
        if self.replay_rankings is not None and self.replay_rankings < 0:
            raise ConfigError(f"`replay_rankings: {self.replay_rankings}` counts rows: use 0 or more, or null.")
        if not self.length_decorrelation >= 0:  # NaN too
            raise ConfigError(
                f"`length_decorrelation: {self.length_decorrelation}` weighs a penalty: use 0 (off) or more."
            )


@dataclass
class PPOScriptArguments(ScriptArguments):
    """Script arguments of the PPO stage: prompts with a `prompt` column (chat messages or text)."""

    dataset_name: str | None = field(default="builtin:prompts", metadata={"help": "PPO prompts."})
    dataset_train_split: str = field(default="ppo", metadata={"help": "Split of the training prompts."})
    dataset_test_split: str = field(default="eval", metadata={"help": "Split of the evaluation prompts."})


@dataclass
class CollectConfig:
    """Comparison collection (InstructGPT step 2's data).

    Args:
        output_dir (`str`):
            Where `rankings/` and `pairs/` (each with `train.jsonl` and `test.jsonl`) are written.
        sft_adapter_path (`str`, *optional*):
            The SFT stage's output directory; `None` samples from the base model.
        prompts_dataset (`str`, *optional*, defaults to `"builtin:prompts"`):
            Prompts to sample for (built-in name, file or Hub id) with a `prompt` column.
        prompts_split (`str`, *optional*, defaults to `"comparison"`):
            Split of `prompts_dataset`.
        num_prompts (`int`, *optional*):
            Use only the first N prompts.
        num_responses (`int`, *optional*, defaults to `4`):
            K, responses sampled and ranked per prompt; InstructGPT used 4 to 9.
        labeler (`str`, *optional*, defaults to `"simulated"`):
            Name of the labeler in `instructrl.labeler.LABELERS`.
        max_new_tokens, temperature, top_p, batch_size:
            Sampling settings; `batch_size` counts prompts (each yields K sequences).
        sampling_workers (`str`, *optional*, defaults to `"auto"`):
            Processes that sample the batches: a whole number, or `"auto"` for one one-thread process per CPU thread
            on a CPU (1 on a GPU; `instructrl.generation.sampling_workers`). Each batch is seeded on its own, so the
            responses are the same for any number.
        test_fraction (`float`, *optional*, defaults to `0.1`):
            Fraction of prompts whose rankings are held out for reward-model evaluation (when
            `test_prompts_split` is not set).
        test_prompts_split (`str`, *optional*):
            A split of `prompts_dataset` (e.g. `"eval"`, the built-in prompts on held-out topics) whose rankings
            form the test split instead; every `prompts_split` prompt is then trained on.
        num_test_prompts (`int`, *optional*):
            Use only the first N prompts of `test_prompts_split`.
        sibling_reranks (`int`, *optional*, defaults to `0`):
            Also rank each training prompt's responses under up to N sibling prompts (same topic words, another
            instruction; `instructrl.comparisons.sibling_rankings`), so the same responses win under one instruction
            and lose under another. Needs a programmatic labeler.
        count_reranks (`int`, *optional*, defaults to `0`):
            Also rank each training prompt's responses under up to N restatements of the prompt that change only the
            number its count instruction states (about N words, N sentences, N bullet points...; each number one
            of the responses' own counts; `instructrl.comparisons.count_rankings`), so that the same responses'
            order follows the number. Needs a programmatic labeler.
        flip_pairs (`int`, *optional*, defaults to `0`):
            Also train on up to N instruction-flip items built from the training prompts
            (`instructrl.comparisons.flip_rankings`): two responses and two sibling prompts under which the labeler
            orders them oppositely, added as two K=2 rankings, which no trait of a response alone can get both right.
            Needs a programmatic labeler.
        responses_from (`str`, *optional*):
            The output folder of an earlier `make collect`: rank its sampled responses again (its train and test
            prompts as it split them) instead of sampling, e.g. after changing the labeler or `sibling_reranks`,
            `count_reranks`, `flip_pairs`; no model is loaded and the prompt and sampling settings are not read.
            Write to another `output_dir`.
        flip_probe_size (`int`, *optional*, defaults to `200`):
            Most items of the instruction-flip probe built from the test prompts (`probes/flip.jsonl`); 0 for none.
        seed (`int`, *optional*, defaults to `42`):
            Seeds sampling and the split.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Run code shipped with the model.
    """

    output_dir: str = field(default="~/.cache/instructrl/outputs/comparisons")
    sft_adapter_path: str | None = field(default=None)
    prompts_dataset: str = field(default="builtin:prompts")
    prompts_split: str = field(default="comparison")
    num_prompts: int | None = field(default=None)
    num_responses: int = field(default=4)
    labeler: str = field(default="simulated")
    max_new_tokens: int = field(default=64)
    temperature: float = field(default=1.0)
    top_p: float = field(default=1.0)
    batch_size: int = field(default=8)
    sampling_workers: str = field(default="auto")
    test_fraction: float = field(default=0.1)
    test_prompts_split: str | None = field(default=None)
    num_test_prompts: int | None = field(default=None)
    sibling_reranks: int = field(default=0)
    count_reranks: int = field(default=0)
    flip_pairs: int = field(default=0)
    flip_probe_size: int = field(default=200)
    responses_from: str | None = field(default=None)
    seed: int = field(default=42)
    trust_remote_code: bool = field(default=False)

    def __post_init__(self):
        if min(self.sibling_reranks, self.count_reranks, self.flip_pairs, self.flip_probe_size) < 0:
            raise ConfigError(
                "`sibling_reranks`, `count_reranks`, `flip_pairs` and `flip_probe_size` count rows: use 0 or more."
            )
        if not 2 <= self.num_responses <= 9:
            raise ConfigError(f"`num_responses` (K) is {self.num_responses}; use 2 to 9 (InstructGPT used 4 to 9).")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"`test_fraction` is {self.test_fraction}; use a value in [0, 1).")
        check_sampling_workers(self.sampling_workers)


@dataclass
class EvalConfig:
    """Evaluation of policies on held-out prompts (InstructGPT section 4 in miniature).

    Args:
        output_dir (`str`):
            Where `metrics.json`, `metrics.md`, `samples.jsonl` (and with `ppo_runs`, `report.md` and plots) go.
        policies (`list[str]`):
            `name=adapter_dir` entries; a bare `name` (or `name=`) is the base model without adapters.
        reference (`str`, *optional*, defaults to `"sft"`):
            The policy that win rates, KL and the alignment tax are measured against; `None` skips them.
        reward_model_path (`str`, *optional*):
            A reward-model adapter from `make rm`; `None` skips RM scores and RM-judged win rates.
        prompts_dataset, prompts_split, num_prompts:
            Held-out prompts (a `prompt` column) and how many to use.
        samples_per_prompt (`int`, *optional*, defaults to `1`):
            Responses each policy samples per prompt. A win rate then compares every sample with every reference
            sample of the same prompt; means and intervals take the prompt as the unit. More samples narrow the
            intervals where responses to one prompt vary a lot; more prompts narrow them more for the same time.
        ptx_dataset_name, ptx_dataset_split, ptx_text_field, ptx_max_length, num_ptx_texts:
            Held-out pretraining text for the alignment tax; `ptx_dataset_name: null` skips it.
        labeler (`str`, *optional*, defaults to `"simulated"`):
            Name of the labeler in `instructrl.labeler.LABELERS`.
        max_new_tokens, temperature, top_p, batch_size, seed:
            Sampling settings; every policy samples from the same seed.
        sampling_workers (`str`, *optional*, defaults to `"auto"`):
            Processes that sample the batches, as in `CollectConfig`.
        ppo_runs (`list[str]`):
            `name=ppo_output_dir` entries whose `log_history.json` is plotted in `report.md`; empty skips the report.
        comparisons_path (`str`, *optional*):
            The collection stage's output: the report then shows which labeler criterion decided its pairs.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Run code shipped with the model.
    """

    output_dir: str = field(default="~/.cache/instructrl/outputs/eval")
    policies: list[str] = field(default_factory=lambda: ["base", "sft=~/.cache/instructrl/outputs/smollm2-135m/sft"])
    reference: str | None = field(default="sft")
    reward_model_path: str | None = field(default=None)
    prompts_dataset: str = field(default="builtin:prompts")
    prompts_split: str = field(default="eval")
    num_prompts: int | None = field(default=None)
    samples_per_prompt: int = field(default=1)
    ptx_dataset_name: str | None = field(default="builtin:pretraining")
    ptx_dataset_split: str = field(default="test")
    ptx_text_field: str = field(default="text")
    ptx_max_length: int = field(default=128)
    num_ptx_texts: int | None = field(default=None)
    labeler: str = field(default="simulated")
    max_new_tokens: int = field(default=64)
    temperature: float = field(default=1.0)
    top_p: float = field(default=1.0)
    batch_size: int = field(default=16)
    sampling_workers: str = field(default="auto")
    seed: int = field(default=42)
    ppo_runs: list[str] = field(default_factory=list)
    comparisons_path: str | None = field(default=None)
    trust_remote_code: bool = field(default=False)

    def __post_init__(self):
        if self.samples_per_prompt < 1:
            raise ConfigError(f"`samples_per_prompt` is {self.samples_per_prompt}; use 1 or more.")
        check_sampling_workers(self.sampling_workers)


def check_sampling_workers(value: str) -> None:
    """`sampling_workers` is "auto" or a whole number >= 1."""
    if str(value) != "auto" and not (str(value).isdigit() and int(value) >= 1):
        raise ConfigError(f'`sampling_workers` is {value!r}; use "auto" or a whole number of processes (1 or more).')


@dataclass
class LabelConfig:
    """Settings of `recipes/label.py`, the human ranking page.

    Args:
        comparisons_dir (`str`):
            The output of `collect --labeler human` (its `tasks.jsonl`); rankings are written there for `make rm`.
        host (`str`, *optional*, defaults to `"127.0.0.1"`):
            Address to serve on. Only this machine is answered unless you set another host explicitly.
        port (`int`, *optional*, defaults to `8765`):
            Port to serve on (0 picks a free one).
        overlap (`float`, *optional*, defaults to `0.1`):
            Fraction of tasks shown to every labeler, to measure agreement between people.
        reference_labeler (`str`, *optional*, defaults to `"simulated"`):
            Automatic labeler each person's rankings are compared with in the statistics; empty for none.
        stats (`bool`, *optional*, defaults to `False`):
            Print the agreement statistics (`make label-stats`) instead of serving the page.
    """

    comparisons_dir: str = field(default="~/.cache/instructrl/outputs/smollm2-135m/comparisons")
    host: str = field(default="127.0.0.1")
    port: int = field(default=8765)
    overlap: float = field(default=0.1)
    reference_labeler: str | None = field(default="simulated")
    stats: bool = field(default=False)

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"`port` is {self.port}; use 1 to 65535 (or 0 for any free port).")
        if not 0.0 <= self.overlap <= 1.0:
            raise ConfigError(f"`overlap` is {self.overlap}; use a fraction between 0 and 1.")
