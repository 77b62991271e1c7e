"""The approaches every evaluation compares, by the names reports, scores files and the served model list use.
Adding an approach is its own code (how it answers) and a name here."""

from __future__ import annotations

GENERALIST = "generalist"  # the base model as it is, with the task's system prompt
PROMPTED = "prompted"  # the base model shown fixed few-shot examples from the training set
RETRIEVAL = "retrieval"  # the base model shown the training examples nearest to each question
FINETUNED = "finetuned"  # the adapter (or full model) this run trained
BASELINES = (GENERALIST, PROMPTED, RETRIEVAL)  # what needs no training, in the order reports list them
# The portfolio's (tasks/evaluate/portfolio.py):
SPECIALIST = "specialist:"  # + a specialization's name: its fine-tuned adapter, on any task
MULTITASK = "multitask"  # one adapter trained on every specialization's data
WITH_RETRIEVAL = f"{FINETUNED}+{RETRIEVAL}"  # the task's own specialist with the retrieved training examples in context
SERVING_ORDER = (*BASELINES, MULTITASK, SPECIALIST, WITH_RETRIEVAL)  # cheapest first: a tie goes to the earlier
