"""What no training text may carry, whichever file it comes from (the data splits at `validate`, the replay text at
`tokenize`): personal data and secrets, and chat-template control tokens."""

from __future__ import annotations

import re
from collections.abc import Iterable

# Personal data and secrets a training set should not carry (a model can repeat what it was trained on); simple
# patterns, tuned to miss code, versions and timestamps. tests/tasks/test_validation_patterns.py holds the cases.
PII_PATTERNS = [
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+\.[A-Za-z0-9.-]*[A-Za-z]{2,}",  # email address
    # North American number, separated or not: an area code starts with 2-9 (so Unix times, 1..., do not match)
    r"(?<![\w.+-])(?:\+?1[ .-]?)?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-]?)\d{3}[ .-]?\d{4}(?![\w-]|\.\d)",
    r"(?<![\w.+])\+(?:[2-9]\d{0,2})[ .-]?(?:\(0\) ?)?\d{1,4}(?:[ .-]?\d{2,4}){2,4}(?!\w|\.\d)",  # international
    r"\b\d{3}-\d{2}-\d{4}\b",  # US social security number
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key id
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}",  # OpenAI / Anthropic API key
    r"\bhf_[A-Za-z0-9]{30,}\b",  # Hugging Face token
    r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",  # GitHub token
    r"\bxox[abprs]-[A-Za-z0-9-]{10,}",  # Slack token
    r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----",  # private key
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JSON web token
]
# Chat-template control tokens (ChatML's <|im_start|>, Llama 3's <|eot_id|>, ...) in data: the tokenizer would turn
# them into the real tokens, so a row could forge a system turn or end an answer early. Refused, never escaped:
# an escaped form would train the model to write it.
CONTROL_TOKEN = r"<\|[A-Za-z0-9_]+\|>"
PII = [re.compile(pattern) for pattern in PII_PATTERNS]
# Payment card numbers: 16 digits in groups of four, or American Express's 4-6-5. A regular expression cannot do the
# Luhn check every issuer's numbers pass, so these are checked in code: a 16-digit id or timestamp then matches one
# time in ten instead of always.
CARDS = [re.compile(r"\b\d{4}[ -]?\d{4}[ -]?\d{4}[ -]?\d{4}\b"), re.compile(r"\b3[47]\d{2}[ -]?\d{6}[ -]?\d{5}\b")]


def luhn_valid(number: str) -> bool:
    """The Luhn checksum: every second digit from the right doubled (less 9 past 9), the sum a multiple of 10."""
    digits = [int(char) for char in reversed(number) if char.isdigit()]
    return sum(d if i % 2 == 0 else 2 * d - 9 * (d > 4) for i, d in enumerate(digits)) % 10 == 0


def has_card_number(text: str) -> bool:
    return any(luhn_valid(found.group(0)) for pattern in CARDS for found in pattern.finditer(text))


def redact(text: str) -> str:
    """The text with each personal-data or secret span replaced: the reports must not copy what the check refuses."""
    for pattern in PII:
        text = pattern.sub("[redacted]", text)
    for pattern in CARDS:
        text = pattern.sub(lambda found: "[redacted]" if luhn_valid(found.group(0)) else found.group(0), text)
    return text


def refused_rows(texts: Iterable[str], shown: int = 5) -> list[str]:
    """"row N: why" for the first `shown` texts that carry personal data, a secret or a control token (row 1 is the
    first), never the text itself."""
    refused = []
    for row, text in enumerate(texts, start=1):
        reasons = [reason for reason, found in (
            ("personal data or a secret", any(pattern.search(text) for pattern in PII) or has_card_number(text)),
            ("a chat-template control token such as <|im_start|>", re.search(CONTROL_TOKEN, text))) if found]
        if reasons:
            refused.append(f"row {row}: {' and '.join(reasons)}")
            if len(refused) == shown:
                break
    return refused
