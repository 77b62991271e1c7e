"""The deployment flow checks `-S` settings with DVC's own override grammar before it starts an experiment, and asks DVC
for the chosen specializations only; `tailor serve` serves each specialization under its name (the multi-task model's
folder for a task it won); the registry lists the multi-task model."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.pipeline import check_settings
from tasks.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def in_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


def test_valid_settings_pass() -> None:
    check_settings.fn(["finetune.learning_rate=0.001", "finetune.lora.target_modules=all-linear",
                       "validate.allowed_responses=[positive,negative]", "seed=7", "promote.metric=rouge_l",
                       "evaluate.max_examples=32", "finetune.dpo.beta=0.2"])


@pytest.mark.parametrize(("setting", "named"), [
    ("finetune.learning_rate=-1", "finetune.learning_rate: Input should be greater than 0"),
    ("finetune.learnig_rate=0.1", "not valid `dvc exp run -S` overrides"),  # DVC refuses a new key without +
    ("+finetune.learnig_rate=0.1", "finetune.learnig_rate: unknown key"),
    ("seed.value=3", "not valid `dvc exp run -S` overrides"),  # a key under a scalar: DVC refuses it too
    ("finetune.learning_rate", "not valid `dvc exp run -S` overrides"),
    # What DVC writes for yes/no is YAML's booleans: the labels would silently become True/False.
    ("validate.allowed_responses=[yes,no]", "validate.allowed_responses.0: Input should be a valid string"),
])
def test_bad_settings_are_named_before_anything_runs(setting: str, named: str) -> None:
    with pytest.raises(UserError) as error:
        check_settings.fn([setting])
    assert named in str(error.value), str(error.value)
    assert "params.yaml with " in str(error.value) or "overrides" in str(error.value)


@pytest.mark.parametrize("setting", [
    "base_model.source=hub", "+base_model.repo_id=attacker/x", "base_model.trust_remote_code=true",
    "++base_model.revision=main", "~base_model.path", "+specializations.demo.base_model.source=hub",
    "+multitask.all.trust_remote_code=true", "data.train=/etc/passwd", "tokenize.replay_text=/root/.ssh/id_rsa",
    "evaluate.forgetting_text=/etc/shadow", "+finetune.init_adapter=/tmp/x", "+specializations.demo.data.train=x",
    "~data",
])
def test_the_form_cannot_change_the_base_model_the_data_or_a_path(setting: str) -> None:
    params = (REPO / "params.yaml").read_bytes()
    with pytest.raises(UserError, match="cannot be changed from a deployment run"):
        check_settings.fn(["finetune.learning_rate=0.001", setting])
    assert (REPO / "params.yaml").read_bytes() == params


def test_a_run_of_chosen_specializations_asks_dvc_for_their_promotions_only() -> None:
    from flows.pipeline import targets
    from tasks.core.dag import declared_paths
    from tasks.core.params import load_params

    params = load_params()
    assert targets(None, params) == ["dvc.yaml"]  # your own specialization, as a plain `dvc repro`
    assert targets(["translation", "classification"], params) == [
        "portfolio/dvc.yaml:portfolio_promote@translation", "portfolio/dvc.yaml:portfolio_promote@classification"]
    with pytest.raises(UserError, match=r"specializations \['tickets'\]: name some of params.yaml's \['class"):
        targets(["tickets", "translation"], params)
    with pytest.raises(UserError, match=r"specializations \[\]: name some"):
        targets([], params)
    assert declared_paths("portfolio_promote", "translation")["decision"] == \
        Path("reports/specializations/translation/promotion.json")


def test_tailor_serve_serves_each_specialization_under_its_name() -> None:
    from tasks.cli import served_models

    served = dict(served_models(["candidate=models/adapter"]))
    assert served == {"production": Path("models/production"), "base": Path("models/base"),
                      "classification": Path("models/specializations/production/classification"),
                      "summarization": Path("models/specializations/production/summarization"),
                      "translation": Path("models/specializations/production/translation"),
                      "candidate": Path("models/adapter")}
    with pytest.raises(UserError, match="--model translation=x: give NAME=PATH with a name not served already"):
        served_models(["translation=x"])


def test_a_task_the_multitask_model_won_is_served_by_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.cli import served_models
    from tasks.core.params import load_params
    from tasks.release.registry import production_dirs, promoted

    for name in ("dvc.yaml", "portfolio/stages.yaml", "params.yaml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text((REPO / name).read_text())
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "models/multitask/all/production"
    (folder / "summarization").mkdir(parents=True)
    (folder / "summarization/lineage.json").write_text("{}")
    served = dict(served_models([]))
    assert served["summarization"] == Path("models/multitask/all/production/summarization")
    assert served["translation"] == Path("models/specializations/production/translation")
    dirs = production_dirs(load_params())
    assert dirs["multitask-all"] == Path("models/multitask/all/production") and promoted(dirs["multitask-all"])
    assert not promoted(dirs["translation"])
