"""What the redactor looks for: one function per detector, ``text -> spans``.

Each detector returns :class:`Span` s (start, end, kind) of one text; the redactor merges the spans of all
enabled detectors and replaces each with ``[REDACTED:<kind>]``. A detector never changes text itself.

Where a maintained detector serves, it is used: API keys and tokens are found by ``detect-secrets``' plugins
(AWS, GitHub, GitLab, Slack, Stripe, JWT, SendGrid, Twilio, npm, PyPI, Azure, basic-auth URLs, keyword
assignments such as ``password = "..."``, ...), called through their plugin API (each plugin's compiled
``denylist``, ``analyze_string``) rather than ``scan_line``, which changes detect-secrets' process-wide
settings on every call. A few patterns detect-secrets does not have are added beside them: OpenAI-style
``sk-...`` keys without the legacy ``T3BlbkFJ`` marker (``sk-proj-...``, ``sk-ant-...``), whole PEM private
key blocks (detect-secrets finds the ``BEGIN`` line only, the key body would stay), unquoted AWS secret
access keys after an ``aws..key`` name, and ``Bearer`` tokens.

Numbers are checked, not just matched, so ordinary numbers are kept: a card number must pass the Luhn check
and start like an issuer's range (2-6), an IBAN must pass the ISO 13616 mod-97 check. Emails and phone numbers
are patterns (Presidio's recognisers are the same patterns plus ``phonenumbers``, which is not a dependency
here): a phone number must be written as one, international (``+44 20 7946 0958``) or North-American
(``(415) 555-0132``, ``415-555-0132``); a bare run of digits is not taken for one.

``high_entropy`` (off by default) adds detect-secrets' entropy check on quoted strings of base64 or hex
characters; it also finds hashes and ids, so it is opt-in.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agentrft.config_sections import PrivacyConfig


@dataclass(frozen=True)
class Span:
    """``text[start:end]`` is a finding of ``kind`` (the name in ``[REDACTED:<kind>]``)."""

    start: int
    end: int
    kind: str


# -- email -------------------------------------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
                    r"[A-Za-z]{2,24}(?![\w-])")


def find_emails(text: str) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        yield Span(m.start(), m.end(), "email")


# -- phone -------------------------------------------------------------------------------------------------

_PHONE_INTERNATIONAL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){2,6}(?!\w)")
_PHONE_NANP = re.compile(r"(?<![\w+(-])(?:\(\d{3}\)[ ]?|\d{3}[-. ])\d{3}[-. ]\d{4}(?![\w-])")


def find_phones(text: str) -> Iterator[Span]:
    for m in _PHONE_INTERNATIONAL.finditer(text):
        if 8 <= sum(c.isdigit() for c in m.group()) <= 15:  # E.164: at most 15 digits
            yield Span(m.start(), m.end(), "phone")
    for m in _PHONE_NANP.finditer(text):
        yield Span(m.start(), m.end(), "phone")


# -- payment card numbers ----------------------------------------------------------------------------------

_CARD = re.compile(r"(?<![\d-])(?:\d{13,19}"
                   r"|\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?"  # 4-4-4-4 (and 4-4-4-1..7)
                   r"|\d{4}([ -])\d{6}\2\d{4,5})(?![\d-])")  # Amex 4-6-5, Diners 4-6-4


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number passes."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_IBAN_HEAD = re.compile(r"[A-Z]{2}\d{2}(?: [A-Z0-9]{4})* $")
"""What precedes digit groups that are the rest of a spaced IBAN, not a card number."""


def find_cards(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        if _IBAN_HEAD.search(text[max(0, m.start() - 48):m.start()]):
            continue
        digits = re.sub(r"\D", "", m.group())
        # issuers' ranges start 2-6 (Mastercard 2/5, Amex 3, Visa 4, Discover/UnionPay/Maestro 6)
        if 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits):
            yield Span(m.start(), m.end(), "credit_card")


# -- IBAN --------------------------------------------------------------------------------------------------

_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)"
                   r"(?![A-Za-z0-9])")


def iban_valid(iban: str) -> bool:
    """ISO 13616: 15-34 characters, and the number read with letters as 10..35, country and check digits
    moved to the end, is 1 mod 97."""
    s = iban.replace(" ", "").upper()
    if not (15 <= len(s) <= 34 and s.isalnum() and s[:2].isalpha() and s[2:4].isdigit()):
        return False
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def find_ibans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        candidate = m.group()
        # a spaced IBAN may have swallowed a following 4-character word: try shorter group boundaries too
        while len(candidate.replace(" ", "")) >= 15:
            if iban_valid(candidate):
                yield Span(m.start(), m.start() + len(candidate), "iban")
                break
            if " " not in candidate:
                break
            candidate = candidate.rsplit(" ", 1)[0]


# -- API keys and tokens -----------------------------------------------------------------------------------

_SECRET_PLUGINS = ("artifactory:ArtifactoryDetector", "aws:AWSKeyDetector", "azure_storage_key:AzureStorageKeyDetector",
                   "basic_auth:BasicAuthDetector", "cloudant:CloudantDetector", "discord:DiscordBotTokenDetector",
                   "github_token:GitHubTokenDetector", "gitlab_token:GitLabTokenDetector",
                   "ibm_cloud_iam:IbmCloudIamDetector", "ibm_cos_hmac:IbmCosHmacDetector", "jwt:JwtTokenDetector",
                   "mailchimp:MailchimpDetector", "npm:NpmDetector", "openai:OpenAIDetector",
                   "private_key:PrivateKeyDetector", "pypi_token:PypiTokenDetector", "sendgrid:SendGridDetector",
                   "slack:SlackDetector", "softlayer:SoftlayerDetector", "square_oauth:SquareOAuthDetector",
                   "stripe:StripeDetector", "telegram_token:TelegramBotTokenDetector", "twilio:TwilioKeyDetector")
"""detect-secrets' regex plugins used by ``secrets`` (its ``IPPublicDetector`` is left out: an address is not
a secret; the keyword plugin is run separately, it yields values rather than matches)."""

_EXTRA_SECRETS = (
    re.compile(r"(?<![\w-])sk-(?:[A-Za-z0-9]+-){0,3}[A-Za-z0-9_-]{20,}"),  # OpenAI/Anthropic-style keys
    re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY"
               r"(?: BLOCK)?-----|\Z)", re.DOTALL),  # the whole block, body included
    re.compile(r"(?i)aws.{0,20}?(?:secret|key).{0,20}?[=:]\s*([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"),
    re.compile(r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{20,}=*)"),
)
_TRIM_START, _TRIM_END = " \t\r\n\"'=:", " \t\r\n\"'"
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-+/=")
_MIN_GROUP = 8
"""A capture group shorter than this names the kind of key (GitHub's ``ghp``), not the key: the whole match
is redacted then."""


@functools.lru_cache(maxsize=1)
def _plugins() -> tuple[list, object]:
    """The detect-secrets plugin instances (imported on first use: detect-secrets imports ``requests``)."""
    import importlib

    from detect_secrets.plugins.keyword import KeywordDetector

    regex_plugins = []
    for entry in _SECRET_PLUGINS:
        module, name = entry.split(":")
        regex_plugins.append(getattr(importlib.import_module(f"detect_secrets.plugins.{module}"), name)())
    return regex_plugins, KeywordDetector()


def _match_span(m: re.Match) -> tuple[int, int]:
    groups = [i for i in range(1, (m.re.groups or 0) + 1) if m.group(i) and len(m.group(i)) >= _MIN_GROUP]
    if groups:
        best = max(groups, key=lambda i: len(m.group(i)))
        return m.start(best), m.end(best)
    start, end = m.start(), m.end()
    while start < end and m.string[start] in _TRIM_START:
        start += 1
    while end > start and m.string[end - 1] in _TRIM_END:
        end -= 1
    if end == m.end():  # a lazy pattern (JWT's) stops short of the key's end
        while end < len(m.string) and m.string[end] in _TOKEN_CHARS:
            end += 1
    return start, end


def find_secrets(text: str) -> Iterator[Span]:
    regex_plugins, keyword = _plugins()
    for plugin in regex_plugins:
        for regex in plugin.denylist:
            for m in regex.finditer(text):
                start, end = _match_span(m)
                if end <= start:
                    continue
                validate = getattr(plugin, "is_formally_valid", None)  # JWT: the parts must decode
                if validate is not None and not validate(text[start:end]):
                    continue
                yield Span(start, end, "secret")
    for regex in _EXTRA_SECRETS:
        for m in regex.finditer(text):
            start, end = _match_span(m)
            if end > start:
                yield Span(start, end, "secret")
    offset = 0
    for line in text.splitlines(keepends=True):  # the keyword plugin finds one assignment per line
        for value in keyword.analyze_string(line):
            yield from _occurrences(text, value, "secret", offset, offset + len(line))
        offset += len(line)


def _occurrences(text: str, value: str, kind: str, lo: int = 0, hi: int | None = None) -> Iterator[Span]:
    if not value:
        return
    hi = len(text) if hi is None else hi
    i = text.find(value, lo, hi)
    while i >= 0:
        yield Span(i, i + len(value), kind)
        i = text.find(value, i + len(value), hi)


# -- high entropy (opt-in) ---------------------------------------------------------------------------------

_QUOTED = re.compile(r"([\"'])([A-Za-z0-9+/_=-]{20,})\1")
_HEX_LIMIT, _BASE64_LIMIT = 3.0, 4.5
"""detect-secrets' default entropy limits for hex and base64 strings."""


def find_high_entropy(text: str) -> Iterator[Span]:
    from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString

    hex_plugin, b64_plugin = HexHighEntropyString(limit=_HEX_LIMIT), Base64HighEntropyString(limit=_BASE64_LIMIT)
    for m in _QUOTED.finditer(text):
        value = m.group(2)
        is_hex = all(c in "0123456789abcdefABCDEF" for c in value)
        plugin, limit = (hex_plugin, _HEX_LIMIT) if is_hex else (b64_plugin, _BASE64_LIMIT)
        if plugin.calculate_shannon_entropy(value) > limit:
            yield Span(m.start(2), m.end(2), "high_entropy")


DETECTORS: dict[str, Callable[[str], Iterator[Span]]] = {
    "email": find_emails,
    "phone": find_phones,
    "credit_card": find_cards,
    "iban": find_ibans,
    "secrets": find_secrets,
    "high_entropy": find_high_entropy,
}
"""Every detector by the name ``privacy.detectors`` uses."""

DEFAULT_DETECTORS = tuple(PrivacyConfig().detectors)

__all__ = ["DEFAULT_DETECTORS", "DETECTORS", "Span", "find_cards", "find_emails", "find_high_entropy",
           "find_ibans", "find_phones", "find_secrets", "iban_valid", "luhn_valid"]
