"""Optional strict HL7 v2 validation with hl7apy (an opt-in quality check).

Never on the hot path: hl7apy is ~25x slower than the python-hl7 parse the
normalizer uses and it drops segments its schema does not know. Use it offline
(CLI, onboarding a new feed) to report how a feed departs from the standard.
"""
from __future__ import annotations


def validate_strict(text: str) -> list[str]:
    """Validate a CR-separated message against hl7apy's schema for its MSH-12 version.

    Returns the problems found as readable strings (``[]`` when the message is
    valid). Never raises: an unsupported version or an unparsable message is
    reported as a problem.
    """
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_message

    problems: list[str] = []
    try:
        msg = parse_message(text.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    except HL7apyException as exc:
        return [f"{type(exc).__name__}: {exc}"]
    except Exception as exc:  # hl7apy raises assorted builtins on malformed input
        return [f"{type(exc).__name__}: {exc}"]
    try:
        msg.validate()
    except HL7apyException as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    return problems
