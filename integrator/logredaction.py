"""A logging filter that blanks store tokens, signing secrets and Authorization values.

The code never logs them on purpose; this is the net under mistakes (an exception message that
quotes a header, a library that logs a request), so that log shipping never carries a credential.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
# Store tokens (hub_...), Standard Webhooks secrets (whsec_...), Fernet tokens of encrypted secrets,
# and whatever follows a Bearer/Basic scheme or a token/secret-named header or field.
SECRET_PATTERNS = re.compile(
    r"hub_[A-Za-z0-9_\-]{16,}"
    r"|whsec_[A-Za-z0-9+/=]{16,}"
    r"|gAAAAA[A-Za-z0-9_\-=]{40,}"
    r"|(?i:(?<=bearer )|(?<=basic ))[^\s'\",]+"
    r"|(?i:(?<=token['\"]: ['\"])|(?<=token=)|(?<=secret['\"]: ['\"])|(?<=secret=))[^\s'\",&]+"
)


def secrets_redact(text: str) -> str:
    return SECRET_PATTERNS.sub(REDACTED, text)


class SecretsRedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the formatter's problem, not ours
            return True
        redacted = secrets_redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        for name, value in list(vars(record).items()):
            if name not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, name, secrets_redact(value))
        if record.exc_info:
            # Formatters render exc_info themselves when it is set; hand them only the redacted text.
            record.exc_text = secrets_redact(record.exc_text or logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = secrets_redact(record.exc_text)
        return True


_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
