"""Data validation: a Great Expectations suite per split, run a chunk at a time on files of any size, its Data Docs
and report, and the clean data written in the canonical shape of its format (tasks/formats/ says what each format
checks and how it maps)."""

from __future__ import annotations

import copy
import datetime
import hashlib
import html
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from great_expectations.validator.validation_statistics import calc_validation_statistics
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core.atomic_dir import write_dir_atomically
from tasks.core.params import ValidateParams
from tasks.data.contamination import NearDuplicate, Placed, near_duplicates
from tasks.data.sensitive import CONTROL_TOKEN, PII_PATTERNS, has_card_number, redact
from tasks.data.splitting import carved
from tasks.data.tables import CHUNK_ROWS, table_chunks

EXAMPLE_ROWS = 3  # offending rows shown per failed expectation
# Expectations about the whole split rather than each row: they run once, on a table of per-value digests that
# holds every row in a few bytes (see digest), while all the others run chunk by chunk on the data itself.
WHOLE_SPLIT = {"expect_table_row_count_to_be_between", "expect_compound_columns_to_be_unique",
               "expect_column_values_to_be_unique", "expect_column_unique_value_count_to_be_between"}
MAX_LISTED = 1000  # unexpected values and row numbers kept per expectation in the report (the counts stay exact)
RESULT_FORMAT = {"result_format": "COMPLETE"}
Chunks = Callable[[], Iterator[pd.DataFrame]]  # a fresh pass over a split, chunk by chunk, indexed by row number
SHOWN_CHARS = 200  # of each offending value kept in reports/validation.json, the Data Docs and the error


def shown(value: Any) -> Any:
    """An offending value as the reports show it: redacted, and cut (a 5 MB row would make a 15 MB report)."""
    if not isinstance(value, str):
        return value
    value = redact(value)
    return value if len(value) <= SHOWN_CHARS else f"{value[:SHOWN_CHARS]}… ({len(value):,} characters)"


def for_reports(result: Any, show: Callable[[Any], Any] = shown) -> Any:
    """The validation result with every offending value it lists passed through `show` (in place)."""
    for outcome in result.results:
        listed = outcome.result or {}
        for key in ("partial_unexpected_list", "unexpected_list"):
            if key in listed:
                listed[key] = [show(value) for value in listed[key]]
        if "partial_unexpected_counts" in listed:
            listed["partial_unexpected_counts"] = [{**item, "value": show(item["value"])}
                                                   for item in listed["partial_unexpected_counts"]]
    return result


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


SAME_ANSWERS = "chosen_equals_rejected"  # the column added to preference pairs: GX compares one column at a time


def with_answer_check(chunks: Chunks, pair: tuple[str, str]) -> Chunks:
    """Preference pairs with a column saying whether the two answers are the same text once stripped."""
    def check(chunk: pd.DataFrame) -> pd.DataFrame:
        if not set(pair) <= set(chunk.columns):
            return chunk
        same = chunk[pair[0]].astype(str).str.strip() == chunk[pair[1]].astype(str).str.strip()
        return chunk.assign(**{SAME_ANSWERS: same})

    return lambda: (check(chunk) for chunk in chunks())


CARD_SUFFIX = "_holds_card_number"


def card_column(column: str) -> str:
    """The column added beside a text column, saying whether each value holds a card number (GX's regular
    expressions cannot do the Luhn check)."""
    return column + CARD_SUFFIX


def with_card_check(chunks: Chunks, columns: list[str]) -> Chunks:
    """Each chunk with card_column(c) beside each text column c it has."""
    def check(chunk: pd.DataFrame) -> pd.DataFrame:
        return chunk.assign(**{card_column(column): chunk[column].map(
            lambda value: isinstance(value, str) and has_card_number(value)) for column in columns
            if column in chunk.columns})

    return lambda: (check(chunk) for chunk in chunks())


def text_expectations(column: str, limits: ValidateParams) -> list[Any]:
    """What every text value must meet: present, text, not blank, within the length bounds, no personal data."""
    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(column=column, description="no missing values"),
        gxe.ExpectColumnValuesToBeOfType(column=column, type_="str", description="values are text"),
        gxe.ExpectColumnValuesToNotMatchRegex(column=column, regex=r"^\s*$",
                                              description="no empty or whitespace-only text"),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column=column, min_value=limits.min_chars, max_value=limits.max_chars,
            description=f"length between {limits.min_chars} and {limits.max_chars} characters"),
    ]
    expectations.append(gxe.ExpectColumnValuesToNotMatchRegex(
        column=column, regex=CONTROL_TOKEN,
        description="no chat-template control tokens such as <|im_start|> (they would become the real tokens)"))
    if limits.pii:
        expectations.append(gxe.ExpectColumnValuesToNotMatchRegexList(
            column=column, regex_list=PII_PATTERNS,
            description="no personal data or secrets (email, phone, US SSN, API keys and tokens, private keys); or "
                        "set validate.pii false"))
        expectations.append(gxe.ExpectColumnValuesToBeInSet(
            column=card_column(column), value_set=[False],
            description="no payment card numbers (16 digits, or 15 for Amex, that pass the Luhn check); or set "
                        "validate.pii false"))
    return expectations


def build_suite(name: str, columns: list[str], limits: ValidateParams, min_rows: int,
                forbidden: dict[str, list[str]], present: set[str]) -> gx.ExpectationSuite:
    """The expectations a split must meet; `forbidden` maps a column to values it must not contain.

    A column missing from the file (`present`) gets only its existence check, so the summary names
    the missing column once instead of listing every expectation that could not run on it.
    """
    answers = columns[1:]  # the response of instruction data, the chosen and rejected ones of preference pairs
    suite = gx.ExpectationSuite(name=name)
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(
        min_value=min_rows, description=f"at least {min_rows} examples"))
    for column in columns:
        suite.add_expectation(gxe.ExpectColumnToExist(
            column=column, description=f"column '{column}' is present (map yours under data.columns)"))
        if column not in present:
            continue
        for expectation in text_expectations(column, limits):
            suite.add_expectation(expectation)
    for answer in answers:
        if limits.allowed_responses and answer in present:
            suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(
                column=answer, value_set=limits.allowed_responses,
                description=f"labels are one of {limits.allowed_responses}"))
    if SAME_ANSWERS in present:
        suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(
            column=SAME_ANSWERS, value_set=[False], description="the chosen and rejected answers differ"))
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


@dataclass(frozen=True)
class Checks:
    """How a format's rows are checked: the rows Great Expectations sees (the file's chunks, or a view of them with
    columns the rules need), the suite for a split, the column a held-out row may not share with train, and the
    columns whose digests the whole-split checks (row count, duplicates) read."""

    view: Callable[[Chunks], Chunks]
    # (split name, minimum rows, values forbidden per column, the columns the split has) -> its suite
    suite: Callable[[str, int, dict[str, list[str]], set[str]], gx.ExpectationSuite]
    key: str
    digested: list[str]


def row_checks(columns: list[str], limits: ValidateParams, answers_differ: tuple[str, str] | None = None) -> Checks:
    """The checks of a format with one example per row in `columns` (the first one is what a held-out example may
    not share with train; the others are answers, held to validate.allowed_responses); `answers_differ` names two
    answer columns that must not hold the same text."""
    def view(chunks: Chunks) -> Chunks:
        if answers_differ is not None:
            chunks = with_answer_check(chunks, answers_differ)
        return with_card_check(chunks, columns) if limits.pii else chunks

    return Checks(view, lambda name, min_rows, forbidden, present: build_suite(
        name, columns, limits, min_rows, forbidden, present), columns[0], columns)


def digest(value: Any) -> Any:
    """A text value as its 128-bit BLAKE2b digest in hex: two different texts share one with a probability near
    n²/2¹²⁹ among n rows (10⁻²⁷ for a million). Anything else (null, a number, a list) stays as it is, so that GX
    treats it exactly as it treats the original value."""
    if not isinstance(value, str):
        return value
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def chunked(split: pd.DataFrame | Path, rows: int) -> Chunks:
    """A split given as a table in memory or as a file, as repeatable passes of `rows` rows at a time."""
    if isinstance(split, pd.DataFrame):
        return lambda: (split.iloc[start:start + rows] for start in range(0, max(len(split), 1), rows))
    return lambda: table_chunks(split, rows)


def rows_at(chunks: Chunks, indices: set[int]) -> dict[int, dict[str, Any]]:
    """The rows at these positions (to show as examples of a failure), reading no further than the last one."""
    found: dict[int, dict[str, Any]] = {}
    for chunk in chunks():
        for index in indices.intersection(chunk.index):
            found[index] = chunk.loc[index].to_dict()
        if len(found) == len(indices):
            break
    return found


def where(index: int, row: dict[str, Any]) -> str:
    """A failing row's place: its row in the file, or for a conversation's message, the line and the turn."""
    if "line" in row:
        return f"line {row['line']}" + (f" turn {row['turn']}" if row.get("turn") else "")
    return f"row {index + 1}"


def displayed(row: dict[str, Any]) -> dict[str, Any]:
    """What of a failing row to show: its own columns (not the card checks'), a conversation's message as role and
    content (the other columns of the per-message view are bookkeeping)."""
    if "line" not in row:
        return {name: value for name, value in row.items() if not name.endswith(CARD_SUFFIX)}
    return {"problem": row["problem"]} if row["problem"] else {"role": row["role"], "content": row["content"]}


def describe_failures(split: str, result: Any, chunks: Chunks) -> list[Failure]:
    """Turn a GX validation result into short lines with a few offending rows each."""
    failed = [outcome for outcome in result.results if not outcome.success]
    shown = [[int(i) for i in ((outcome.result or {}).get("unexpected_index_list") or [])[:EXAMPLE_ROWS]]
             for outcome in failed]
    wanted = {index for indices in shown for index in indices}
    rows = rows_at(chunks, wanted) if wanted else {}
    failures = []
    for outcome, indices in zip(failed, shown):
        config = outcome.expectation_config
        examples = [f"{where(index, rows[index])} "
                    f"{redact(json.dumps(displayed(rows[index]), ensure_ascii=False, default=str))[:160]}"
                    for index in indices]
        column = config.kwargs.get("column") or ",".join(config.kwargs.get("column_list") or [])
        failures.append(Failure(
            split=split,
            expectation=f"{config.type}({column})" if column else config.type,
            description=config.description or "",
            unexpected_count=int((outcome.result or {}).get("unexpected_count") or 0),
            examples=examples,
        ))
    return failures


def percent(part: int, whole: int) -> float | None:
    return part / whole * 100 if whole > 0 else None


def merge_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One row-wise expectation's results on consecutive chunks, as GX reports them on the whole split: counts
    added, percentages recomputed from them, value and row-number lists joined (capped at MAX_LISTED)."""
    merged = dict(parts[0])
    if "element_count" not in merged:  # not a per-row expectation (a column's existence): the same on every chunk
        return merged
    for key in ("element_count", "unexpected_count", "missing_count"):
        if key in merged:
            merged[key] = sum(part.get(key) or 0 for part in parts)
    for key, cap in (("partial_unexpected_list", 20), ("partial_unexpected_index_list", 20),
                     ("unexpected_list", MAX_LISTED), ("unexpected_index_list", MAX_LISTED)):
        if key in merged:
            merged[key] = [value for part in parts for value in part.get(key) or []][:cap]
    if "unexpected_index_query" in merged:
        merged["unexpected_index_query"] = f"df.filter(items={merged.get('unexpected_index_list', [])}, axis=0)"
    if "partial_unexpected_counts" in merged:
        try:  # as GX counts them: the 20 most frequent unexpected values, most frequent first
            counts = Counter(merged.get("unexpected_list") or []).most_common(20)
            merged["partial_unexpected_counts"] = [{"value": value, "count": count} for value, count in
                                                   sorted(counts, key=lambda item: (-item[1], item[0]))]
        except TypeError:
            pass
    elements, unexpected = merged["element_count"], merged.get("unexpected_count") or 0
    nonmissing = elements - merged.get("missing_count", 0)
    if "missing_count" in merged:
        merged["missing_percent"] = percent(merged["missing_count"], elements)
        merged["unexpected_percent_total"] = percent(unexpected, elements)
        merged["unexpected_percent_nonmissing"] = percent(unexpected, nonmissing)
    merged["unexpected_percent"] = percent(unexpected, nonmissing)
    return merged


def merge_results(chunk_results: list[Any], whole_split: Any) -> Any:
    """The suite's result on the whole split, in the order GX reports it: the per-row expectations merged over
    the chunks, and the whole-split ones (row count, duplicates) taken from their run on the digests."""
    merged = chunk_results[0]
    whole = {outcome.expectation_config.type: outcome for outcome in whole_split.results}
    results = []
    for position, outcome in enumerate(merged.results):
        if outcome.expectation_config.type in WHOLE_SPLIT:
            outcome = whole[outcome.expectation_config.type]
        else:
            parts = [result.results[position] for result in chunk_results]
            outcome.success = all(part.success for part in parts)
            outcome.result = merge_counts([part.result or {} for part in parts])
            raised = [part.exception_info for part in parts if (part.exception_info or {}).get("raised_exception")]
            outcome.exception_info = raised[0] if raised else outcome.exception_info
        results.append(outcome)
    statistics = calc_validation_statistics(results)
    merged.results = results
    merged.success = statistics.success
    merged.statistics = {"evaluated_expectations": statistics.evaluated_expectations,
                         "successful_expectations": statistics.successful_expectations,
                         "unsuccessful_expectations": statistics.unsuccessful_expectations,
                         "success_percent": statistics.success_percent}
    return merged


def quiet_context() -> Any:
    """An ephemeral GX context without its progress bars (one bar per metric floods the log)."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def validate_split(context: Any, split: str, suite: Callable[[], gx.ExpectationSuite], chunks: Chunks,
                   columns: list[str]) -> tuple[Any, pd.DataFrame, gx.ExpectationSuite]:
    """Run the split's suite on each chunk, and its whole-split expectations once on the digests of every row.

    Returns the merged result, the digests of the required columns (the leakage check reads train's) and the
    suite (Data Docs show it). The whole-split expectations also run on each chunk, where they cost little;
    merging replaces their results.
    """
    whole_suite = suite()
    whole_suite.name = f"{split}_whole"
    for expectation in list(whole_suite.expectations):
        if expectation.expectation_type not in WHOLE_SPLIT:
            whole_suite.delete_expectation(expectation)
    full_suite = suite()
    by_chunk, whole = (context.validation_definitions.add(gx.ValidationDefinition(
        name=part.name, suite=context.suites.add(part),
        data=context.data_sources.get(source).add_dataframe_asset(split).add_batch_definition_whole_dataframe("all")))
        for part, source in ((full_suite, "raw"), (whole_suite, "digests")))
    # One run id for all chunks: each chunk's result replaces the previous one in GX's store.
    run_id = RunIdentifier(run_time=datetime.datetime.now(datetime.UTC))
    results, digested = [], []
    for chunk in chunks():
        results.append(by_chunk.run(batch_parameters={"dataframe": chunk}, result_format=RESULT_FORMAT,
                                    run_id=run_id))
        digested.append(chunk[[c for c in columns if c in chunk]].map(digest))
    digests = pd.concat(digested)
    whole_result = whole.run(batch_parameters={"dataframe": digests}, result_format=RESULT_FORMAT, run_id=run_id)
    return for_reports(merge_results(results, whole_result)), digests, full_suite


def leaked_values(chunks: Chunks, column: str, train_digests: set[str]) -> list[str]:
    """The eval split's values of `column` that also occur in train, found by their digests."""
    leaked = {value for chunk in chunks() if column in chunk for value in chunk[column]
              if isinstance(value, str) and digest(value) in train_digests}
    return sorted(leaked)


def placed_texts(chunks: Chunks, column: str) -> Iterator[Placed]:
    """Each row's text in `column`, with its place as a failure names it."""
    for chunk in chunks():
        if column not in chunk:
            continue
        lines = chunk.get("line")
        for index, value in chunk[column].items():
            if isinstance(value, str):
                yield where(index, {} if lines is None else {"line": lines[index]}), value


def contamination_report(pairs: list[NearDuplicate], limits: ValidateParams) -> dict[str, Any]:
    """What validation.json says of the near duplicates: the setting, the count, the pairs (redacted and cut)."""
    return {"action": limits.near_duplicates, "similarity": limits.near_duplicate_similarity, "count": len(pairs),
            "pairs": [{"eval": pair.held_out, "train": pair.train, "similarity": pair.similarity,
                       "eval_text": shown(pair.held_out_text), "train_text": shown(pair.train_text)}
                      for pair in pairs[:MAX_LISTED]]}


def contamination_failure(pairs: list[NearDuplicate], column: str, limits: ValidateParams) -> Failure:
    return Failure(
        split="eval", expectation=f"near_duplicates({column})",
        description=f"no eval example nearly repeats a train one (similarity >= {limits.near_duplicate_similarity}: "
                    "remove or rewrite them, or set validate.near_duplicates: report)",
        unexpected_count=len(pairs),
        examples=[f"eval {pair.held_out} ~ train {pair.train} ({pair.similarity}): "
                  f"{json.dumps(shown(pair.held_out_text)[:70], ensure_ascii=False)} ~ "
                  f"{json.dumps(shown(pair.train_text)[:70], ensure_ascii=False)}" for pair in pairs[:EXAMPLE_ROWS]])


def render_data_docs(results: dict[str, Any], suites: dict[str, gx.ExpectationSuite], docs_dir: Path) -> None:
    """Data Docs with one validation result per split, as if GX had validated each split whole; they replace the
    last run's whole (they are not a DVC output, which DVC would have cleared, and GX adds a page per run)."""
    write_dir_atomically(docs_dir, lambda staging: build_data_docs(results, suites, staging))


def build_data_docs(results: dict[str, Any], suites: dict[str, gx.ExpectationSuite], docs_dir: Path) -> None:
    context = quiet_context()
    context.add_data_docs_site(site_name="tailor", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    for split, result in results.items():
        # GX writes listed values into the page as they are: text from the data must not become markup there.
        result = for_reports(copy.deepcopy(result), lambda value: html.escape(value) if isinstance(value, str)
                             else value)
        suite_id = ExpectationSuiteIdentifier(name=context.suites.add(suites[split]).name)
        key = ValidationResultIdentifier(expectation_suite_identifier=suite_id, run_id=result.meta["run_id"],
                                         batch_identifier=result.batch_id)
        context.validation_results_store.store_validation_results(result, key, suite_id)
    context.build_data_docs(site_names=["tailor"])


@task(cache_policy=NO_CACHE)
def run_suites(train: pd.DataFrame | Path, evaluation: pd.DataFrame | Path, checks: Checks, limits: ValidateParams,
               docs_dir: Path, chunk_rows: int = CHUNK_ROWS) -> tuple[dict[str, Any], list[Failure]]:
    """Validate both splits (tables, or files read `chunk_rows` rows at a time) and render Data Docs into docs_dir.

    Train needs limits.min_examples rows; eval needs one, and none of its `checks.key` values (the prompt, the text,
    a conversation's opening) may appear in train. Memory holds one chunk plus a 16-byte digest per value of every
    row: the per-row expectations run on each chunk and are merged; the row count and the duplicate check run once
    on the digests; leakage is checked by GX against the eval values whose digest is among train's, and near
    duplicates (validate.near_duplicates) by MinHash sketches of eval's values with train streamed past them.
    """
    context = quiet_context()  # suites can only be built once a context exists
    for source in ("raw", "digests"):
        context.data_sources.add_pandas(source)
    sources = {"train": checks.view(chunked(train, chunk_rows)), "eval": checks.view(chunked(evaluation, chunk_rows))}
    forbidden: dict[str, list[str]] = {}
    present = {split: set(next(chunks()).columns) for split, chunks in sources.items()}
    suites = {"train": lambda: checks.suite("train", limits.min_examples, {}, present["train"]),
              "eval": lambda: checks.suite("eval", 1, forbidden, present["eval"])}
    key = checks.key
    results, ran = {}, {}
    results["train"], digests, ran["train"] = validate_split(context, "train", suites["train"], sources["train"],
                                                             checks.digested)
    seen_in_train = {d for d in digests[key] if isinstance(d, str)} if key in digests else set()
    del digests
    if seen_in_train:
        forbidden[key] = leaked_values(sources["eval"], key, seen_in_train)
    results["eval"], _, ran["eval"] = validate_split(context, "eval", suites["eval"], sources["eval"],
                                                     checks.digested)

    render_data_docs(results, ran, docs_dir)
    report: dict[str, Any] = {"success": all(r.success for r in results.values()), "splits": {}}
    failures: list[Failure] = []
    for split, result in results.items():
        report["splits"][split] = result.describe_dict()
        failures += describe_failures(split, result, sources[split])
    if limits.near_duplicates != "off":
        pairs = near_duplicates(placed_texts(sources["train"], key), placed_texts(sources["eval"], key),
                                limits.near_duplicate_similarity)
        report["near_duplicates"] = contamination_report(pairs, limits)
        if pairs and limits.near_duplicates == "refuse":
            report["success"] = False
            failures.append(contamination_failure(pairs, key, limits))
    return report, failures


def write_clean_splits(splits: dict[str, Path], canonical: Callable[[pd.DataFrame], pd.DataFrame],
                       out_dir: Path, dev: np.ndarray | None = None) -> None:
    """Each validated file as out_dir/<split>.parquet in its format's canonical shape, read, mapped and written a
    chunk at a time; with `dev` (a flag per train row), train's flagged rows go to dev.parquet instead."""
    out_dir.mkdir(parents=True)
    for split, path in splits.items():
        frames = (canonical(chunk) for chunk in table_chunks(path))
        if split != "train" or dev is None:
            write_parquet(frames, out_dir / f"{split}.parquet")
            continue
        write_parquet(carved(frames, dev, keep_dev=False), out_dir / "train.parquet")
        write_parquet(carved((canonical(chunk) for chunk in table_chunks(path)), dev, keep_dev=True),
                      out_dir / "dev.parquet")


def write_parquet(frames: Iterator[pd.DataFrame], path: Path) -> None:
    """Write tables one after another into one Parquet file (a row group each), as pandas' to_parquet writes one."""
    writer = None
    try:
        for frame in frames:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            writer = writer or pq.ParquetWriter(path, table.schema, compression="snappy")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
