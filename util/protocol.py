"""The two protocols of the step scripts (``--protocol``).

``healthivert`` (default) runs this implementation with its documented fixes;
``reference`` reproduces what the published HealthiVert-GAN code does wherever that
is not a crash or a plain bug, so its numbers can be reproduced.
"""

from __future__ import annotations

import argparse

PROTOCOLS = ("healthivert", "reference")
DEFAULT_PROTOCOL = "healthivert"


def check_protocol(protocol: str) -> str:
    """Return ``protocol`` or raise ``ValueError`` naming the allowed values."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: expected one of {PROTOCOLS}")
    return protocol


def add_protocol_argument(parser: argparse.ArgumentParser, reference_means: str) -> None:
    """Add ``--protocol healthivert|reference``; ``reference_means`` says what reference changes here."""
    parser.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL,
                        help=f"healthivert: this implementation with its fixes; reference: the published code's "
                             f"behaviour ({reference_means})")
