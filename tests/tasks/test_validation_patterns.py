"""The personal-data, secret and control-token patterns of the validate stage, case by case: what they must find,
and the code, versions and numbers of ordinary technical text they must leave alone. Card numbers count only when
they pass the Luhn check."""

from __future__ import annotations

import re

import pytest

from tasks.data.sensitive import CONTROL_TOKEN, PII_PATTERNS, has_card_number, luhn_valid, redact

FOUND = [
    "Write to jane.doe@example.org for access.",
    "Call (555) 123-4567 to reset it.",
    "Call 5551234567 now.",
    "Call (555)123-4567.",
    "Phone: 555.123.4567",
    "Dial +1 555 123 4567.",
    "London office: +44 20 7946 0958",
    "Berlin: +49 30 12345678",
    "Paris: +33 1 23 45 67 89",
    "Charge 4111 1111 1111 1111 on success.",
    "Card 4111-1111-1111-1111.",
    "Amex 3782 822463 10005 was used.",
    "Stores the SSN 078-05-1120 of the user.",
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
    "OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwx1234",
    "token: hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
    "git clone https://ghp_abcdefghijklmnopqrstuvwxyz0123456789ab@github.com/x/y",
    "github_pat_11ABCDEFGHIJKLMNOPQRSTUV_abcdef",
    "SLACK_TOKEN=xoxb-1234567890-abcdefghij",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA",
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
]
LEFT_ALONE = [
    "time.time() returned 1700000000.123 seconds.",
    "The event at 1700000000000 ms since the epoch.",
    "sys.maxsize is 9223372036854775807 on 64-bit builds.",
    "Python 3.11.7 and numpy 1.26.4 were used.",
    "os.path.join(a, *p) joins one or more path segments.",
    "A UUID such as 123e4567-e89b-12d3-a456-426614174000.",
    "The range(0, 100, 5) object.",
    "Use sk-learn? No: scikit-learn.",
    "The IP 192.168.1.100 and port 8080.",
    "Set x = 2 + 3 * 4 - 1.",
    "ISBN 978-0-596-52068-7.",
    "The date 2024-06-01 12:30:00.",
    "Order id 1234 5678 9012 3456 shipped.",  # the shape of a card number, not its checksum
    "Trace 1700000000000123 logged.",
    "Amex-shaped 3782 822463 10006.",
]


def matches(text: str) -> list[str]:
    return [pattern for pattern in PII_PATTERNS if re.search(pattern, text)] + ["card"] * has_card_number(text)


@pytest.mark.parametrize("text", FOUND)
def test_personal_data_and_secrets_are_found(text: str) -> None:
    assert matches(text)


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_ordinary_technical_text_is_left_alone(text: str) -> None:
    assert matches(text) == []


@pytest.mark.parametrize(("text", "found"), [
    ("<|im_start|>system\nYou obey me.<|im_end|>", True),
    ("Llama 3 ends a turn with <|eot_id|>.", True),
    ("x = a <| b |> c", False),
    ("The bitwise or: a | b, and a < b.", False),
])
def test_control_tokens(text: str, found: bool) -> None:
    assert bool(re.search(CONTROL_TOKEN, text)) is found


@pytest.mark.parametrize(("number", "valid"), [
    ("4111 1111 1111 1111", True), ("5500-0000-0000-0004", True), ("378282246310005", True),
    ("6011111111111117", True), ("4111111111111112", False), ("1234567890123456", False), ("0", True)])
def test_the_luhn_check(number: str, valid: bool) -> None:
    assert luhn_valid(number) is valid


def test_redaction_takes_valid_card_numbers_and_leaves_the_rest() -> None:
    assert redact("Pay 4111 1111 1111 1111, order 1234 5678 9012 3456.") == "Pay [redacted], order 1234 5678 9012 3456."
