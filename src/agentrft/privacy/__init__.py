"""Privacy: what a run writes of the text it sees (``privacy: {store: full|redacted|none, detectors: [...]}``).

:class:`Redactor` is built from a job's :class:`~agentrft.config.PrivacyConfig`; every writer of a run's text
goes through it (:mod:`agentrft.privacy.redactor`). The detectors (emails, phone numbers, Luhn-checked card
numbers, mod-97-checked IBANs, API keys and tokens via ``detect-secrets``) are in
:mod:`agentrft.privacy.detectors`. See docs/privacy.md.
"""

from agentrft.privacy.detectors import DEFAULT_DETECTORS, DETECTORS, Span, iban_valid, luhn_valid
from agentrft.privacy.redactor import (MARKER, STORE_MODES, Redactor, TokensNotStoredError, require_tokens,
                                       stored_privacy)

__all__ = ["DEFAULT_DETECTORS", "DETECTORS", "MARKER", "STORE_MODES", "Redactor", "Span", "TokensNotStoredError",
           "iban_valid", "luhn_valid", "require_tokens", "stored_privacy"]
