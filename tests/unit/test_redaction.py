"""What counts as a secret, and how it is masked."""

from __future__ import annotations

from compose_env.redaction import MASK, Redactor, is_secret_key, secret_env_values


def test_env_keys_naming_a_secret_are_the_ones_containing_password_secret_token_or_key() -> None:
    env = {"DB_PASSWORD": "a1", "api_token": "b2", "SECRET": "c3", "SSH_KEY_FILE": "d4", "MONKEY": "e5", "USER": "f6"}

    assert secret_env_values(env) == ["a1", "b2", "c3", "d4", "e5"]
    assert not is_secret_key("USER")


def test_every_occurrence_is_masked_and_a_secret_containing_another_is_masked_whole() -> None:
    redact = Redactor(["abc", "xxabcxx"])

    assert redact("abc then xxabcxx and abc") == f"{MASK} then {MASK} and {MASK}"


def test_regex_characters_in_secrets_are_literal() -> None:
    redact = Redactor(["p.ss(w)rd*"])

    assert redact("pass p.ss(w)rd* pXss(w)rd") == f"pass {MASK} pXss(w)rd"


def test_very_short_values_are_not_masked_because_they_would_mask_everything() -> None:
    redact = Redactor(["", "1", "on"])

    assert redact("run 1 is on") == "run 1 is on"


def test_each_line_of_a_multi_line_secret_is_masked_as_printed_line_by_line() -> None:
    pem = "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\n-----END KEY-----"
    redact = Redactor([pem])

    assert redact("key: MIIEvQIBADANBgkq") == f"key: {MASK}"
    assert redact(pem) == MASK


def test_secrets_added_later_are_masked_too() -> None:
    redact = Redactor()
    assert redact("token-123") == "token-123"

    redact.add(["token-123"])

    assert redact("token-123") == MASK


def test_a_boolean_under_a_secret_name_is_no_secret() -> None:
    from compose_env.redaction import secret_env_values

    assert secret_env_values({"USE_API_KEY": "true", "DB_PASSWORD": "12345678", "TOKEN_CHECK": "false"}) == ["12345678"]
