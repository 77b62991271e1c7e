"""The approaches every evaluation compares, by the names reports, scores files and the served model list use.
Adding an approach is its own code (how it answers) and a name here."""

from __future__ import annotations

GENERALIST = "generalist"  # the base model as it is, with the task's system prompt
PROMPTED = "prompted"  # the base model shown fixed few-shot examples from the training set
RETRIEVAL = "retrieval"  # the base model shown the training examples nearest to each question
FINETUNED = "finetuned"  # the adapter (or full model) this run trained
BASELINES = (GENERALIST, PROMPTED, RETRIEVAL)  # what needs no training, in the order reports list them
WITH_RETRIEVAL = f"{FINETUNED}+{RETRIEVAL}"  # the fine-tuned model with the retrieved training examples in context
# The adapter finetune.init_adapter names, which this run's training (DPO, GRPO, more SFT) started from: scored so
# that the report says what the new training added; never shipped from this run (its own run shipped it).
INIT_ADAPTER = "init_adapter"
# The portfolio's (tasks/evaluate/portfolio.py):
SPECIALIST = "specialist:"  # + a specialization's name: its fine-tuned adapter, on any task
MULTITASK = "multitask"  # one adapter trained on every specialization's data
# What serving each costs, cheapest first (tasks/evaluate/decision.py: a tie goes to the earlier). The run's own
# fine-tuned model ranks with a specialization's specialist: both are an adapter of the task's own.
SERVING_ORDER = (*BASELINES, MULTITASK, SPECIALIST, WITH_RETRIEVAL)
# What the promote stage can ship as a bundle (tasks/release/bundle.py): every approach the evaluate stage scores.
SHIPPABLE = (*BASELINES, FINETUNED, WITH_RETRIEVAL)
ADAPTED = (FINETUNED, WITH_RETRIEVAL)  # the shippable approaches whose model is not the base model


def serving_rank(approach: str) -> int:
    own_adapter = approach == FINETUNED or approach.startswith(SPECIALIST)
    return SERVING_ORDER.index(SPECIALIST if own_adapter else approach)
