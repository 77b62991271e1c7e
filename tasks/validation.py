"""Data validation: a Great Expectations suite per split, and the clean data in the pipeline's column names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.params import DataParams, ValidateParams

EXAMPLE_ROWS = 3  # offending rows shown per failed expectation
# Personal data a training set should not carry; deliberately simple patterns, tuned to miss code and versions.
PII_PATTERNS = [
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+\.[A-Za-z0-9.-]*[A-Za-z]{2,}",  # email address
    r"(?:\+\d{1,3}[ .-]?)?\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b",  # phone number
    r"\b\d{4}[ -]?\d{4}[ -]?\d{4}[ -]?\d{1,4}\b",  # payment card number
    r"\b\d{3}-\d{2}-\d{4}\b",  # US social security number
]


@dataclass(frozen=True)
class Failure:
    """One failed expectation, in the words a user needs to fix the data."""

    split: str
    expectation: str
    description: str
    unexpected_count: int
    examples: list[str]

    def line(self) -> str:
        shown = "; ".join(self.examples)
        count = f"{self.unexpected_count} rows" if self.unexpected_count else "failed"
        return f"[{self.split}] {self.expectation}: {self.description} ({count}{': ' + shown if shown else ''})"


def required_columns(data: DataParams) -> dict[str, str]:
    """Pipeline column name -> the user's column name, for the configured data format."""
    if data.format == "text":
        return {"text": data.columns.text}
    return {"prompt": data.columns.prompt, "response": data.columns.response}


def build_suite(name: str, columns: list[str], limits: ValidateParams, min_rows: int,
                forbidden: dict[str, list[str]], present: set[str]) -> gx.ExpectationSuite:
    """The expectations a split must meet; `forbidden` maps a column to values it must not contain.

    A column missing from the file (`present`) gets only its existence check, so the summary names
    the missing column once instead of listing every expectation that could not run on it.
    """
    label_column = columns[-1] if len(columns) > 1 else None  # the response column of instruction data
    suite = gx.ExpectationSuite(name=name)
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(
        min_value=min_rows, description=f"at least {min_rows} examples"))
    for column in columns:
        suite.add_expectation(gxe.ExpectColumnToExist(
            column=column, description=f"column '{column}' is present (map yours under data.columns)"))
        if column not in present:
            continue
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column, description="no missing values"))
        suite.add_expectation(gxe.ExpectColumnValuesToBeOfType(column=column, type_="str", description="values are text"))
        suite.add_expectation(gxe.ExpectColumnValuesToNotMatchRegex(
            column=column, regex=r"^\s*$", description="no empty or whitespace-only text"))
        suite.add_expectation(gxe.ExpectColumnValueLengthsToBeBetween(
            column=column, min_value=limits.min_chars, max_value=limits.max_chars,
            description=f"length between {limits.min_chars} and {limits.max_chars} characters"))
        if limits.pii:
            suite.add_expectation(gxe.ExpectColumnValuesToNotMatchRegexList(
                column=column, regex_list=PII_PATTERNS,
                description="no personal data (email, phone, card number, US SSN); or set validate.pii false"))
    if limits.allowed_responses and label_column in present:
        suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(
            column=label_column, value_set=limits.allowed_responses,
            description=f"labels are one of {limits.allowed_responses}"))
    if all(column in present for column in columns):
        # GX's compound check needs two or more columns; a one-column format (plain text) has its own check.
        suite.add_expectation(
            gxe.ExpectCompoundColumnsToBeUnique(column_list=columns, description="no exact duplicate examples")
            if len(columns) > 1 else
            gxe.ExpectColumnValuesToBeUnique(column=columns[0], description="no exact duplicate examples"))
    for column, values in forbidden.items():
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeInSet(
            column=column, value_set=values, description=f"no eval example leaks into train ({column} seen in train)"))
    return suite


def describe_failures(split: str, result: Any, frame: pd.DataFrame) -> list[Failure]:
    """Turn a GX validation result into short lines with a few offending rows each."""
    failures = []
    for outcome in result.results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        indices = (outcome.result or {}).get("unexpected_index_list") or []
        examples = []
        for index in indices[:EXAMPLE_ROWS]:
            row = frame.loc[index].to_dict()
            examples.append(f"row {int(index) + 1} {json.dumps(row, ensure_ascii=False, default=str)[:160]}")
        column = config.kwargs.get("column") or ",".join(config.kwargs.get("column_list") or [])
        failures.append(Failure(
            split=split,
            expectation=f"{config.type}({column})" if column else config.type,
            description=config.description or "",
            unexpected_count=int((outcome.result or {}).get("unexpected_count") or 0),
            examples=examples,
        ))
    return failures


@task(cache_policy=NO_CACHE)
def run_suites(train: pd.DataFrame, evaluation: pd.DataFrame, columns: list[str], limits: ValidateParams,
               docs_dir: Path) -> tuple[dict[str, Any], list[Failure]]:
    """Validate both splits in an ephemeral GX context and render Data Docs into docs_dir.

    Train needs limits.min_examples rows; eval needs one, and none of its first column's values
    (the prompt, or the text) may appear in train.
    """
    context = gx.get_context(mode="ephemeral")  # suites can only be built once a context exists
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # one bar per metric floods the log
    key = columns[0]
    seen_in_train = sorted({v for v in train[key] if isinstance(v, str)}) if key in train else []
    suites = {
        "train": build_suite("train", columns, limits, limits.min_examples, {}, set(train.columns)),
        "eval": build_suite("eval", columns, limits, 1, {key: seen_in_train} if seen_in_train else {},
                            set(evaluation.columns)),
    }
    frames = {"train": train, "eval": evaluation}
    context.add_data_docs_site(site_name="tailor", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    source = context.data_sources.add_pandas("raw")
    report: dict[str, Any] = {"success": True, "splits": {}}
    failures: list[Failure] = []
    for split, frame in frames.items():
        batch = source.add_dataframe_asset(split).add_batch_definition_whole_dataframe("all")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=split, data=batch, suite=context.suites.add(suites[split])))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"validate_{split}", validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "COMPLETE"},
        ))
        run = checkpoint.run(batch_parameters={"dataframe": frame})
        result = next(iter(run.run_results.values()))
        report["splits"][split] = result.describe_dict()
        report["success"] &= bool(result.success)
        failures += describe_failures(split, result, frame)
    return report, failures


def normalize(frame: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    """Keep only the pipeline's columns, under the pipeline's names."""
    return frame[list(columns.values())].rename(columns={v: k for k, v in columns.items()}).reset_index(drop=True)
