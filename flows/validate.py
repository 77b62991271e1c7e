"""Stage validate: check the raw data with Great Expectations; write the clean splits only if all pass."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.stage import run_stage, start_stage_run
from tasks.core.atomic_dir import write_dir_atomically
from tasks.core.errors import UserError
from tasks.core.params import DataParams, Params, ValidateParams
from tasks.data.splitting import dev_rows
from tasks.data.tables import table_chunks
from tasks.data.validation import run_suites, write_clean_splits
from tasks.formats.registry import format_of


@dataclass(frozen=True)
class Paths:
    out: Path  # train.parquet, eval.parquet (the test split) and, with data.dev_pct, dev.parquet: canonical
    docs: Path  # Great Expectations Data Docs
    report: Path  # the validation result as JSON


@flow(name="validate", on_running=[start_stage_run])
def validate_flow(data: DataParams, limits: ValidateParams, seed: int, paths: Paths) -> Path:
    """Validate train and eval splits; on any failed expectation stop with a summary and write no data.

    The files are read in chunks, twice: once to validate, once more to write the clean splits (only if all
    expectations pass), so memory holds a chunk at a time, never a whole split. With data.dev_pct, train is read
    once more to carve the dev split out of it (tasks/data/splitting.py)."""
    reader = format_of(data.format)
    report, failures = run_suites(data.train, data.eval, reader.checks(data, limits), limits, paths.docs)
    lines = [failure.line() for failure in failures]
    near = report.get("near_duplicates", {})
    if near.get("count") and near["action"] == "report":
        lines.append(f"{near['count']} eval examples nearly repeat a train one (reported, not refused: "
                     f"validate.near_duplicates report); the pairs are in {paths.report}")
        get_run_logger().warning(lines[-1])
    create_markdown_artifact(
        key="data-quality",
        markdown="## Data quality\n\n" + ("\n".join(f"- {line}" for line in lines) or "All expectations passed."),
        description="Great Expectations summary of the validate stage",
    )
    dev = None
    try:
        if failures:
            raise UserError(
                f"data validation failed for {data.train} and {data.eval} ({len(failures)} expectations):\n  - "
                + "\n  - ".join(lines)
                + f"\nFix the data (or the limits under validate: in params.yaml); details in {paths.docs}/index.html"
            )
        if data.dev_pct:
            dev = dev_rows(((raw, reader.canonical(raw, data)) for raw in table_chunks(data.train)), data, limits,
                           seed)
            report["dev"] = {"carved_pct": data.dev_pct, "group_by": data.group_by, "rows": int(dev.sum()),
                             "train_rows_left": int((~dev).sum())}
    finally:
        paths.report.parent.mkdir(parents=True, exist_ok=True)
        paths.report.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return write_dir_atomically(paths.out, lambda staging: write_clean_splits(
        {"train": data.train, "eval": data.eval}, lambda chunk: reader.canonical(chunk, data), staging, dev))


def main(params: Params, paths: Paths) -> None:
    validate_flow(params.data, params.validate_, params.seed, paths)


if __name__ == "__main__":
    run_stage(main, Paths)
