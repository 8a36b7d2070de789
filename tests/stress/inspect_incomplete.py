"""Print, as JSON, the objects of a SoftHSM2 token that have no CKA_ID (run in its own process:
``python -m tests.stress.inspect_incomplete MODULE LABEL`` with the PIN in $STRESS_PIN and
SOFTHSM2_CONF set).  The gateway finds keys only by CKA_ID, so such objects are nothing it
made whole; this says what they hold.  python-pkcs11 here, not the adapter: an outside view."""

from __future__ import annotations

import json
import os
import sys

import pkcs11
from pkcs11 import Attribute

FIELDS = ("CLASS", "KEY_TYPE", "LABEL", "VALUE_LEN", "SENSITIVE", "EXTRACTABLE")


def main() -> int:
    module, label = sys.argv[1], sys.argv[2]
    token = pkcs11.lib(module).get_token(token_label=label)
    found = []
    with token.open(user_pin=os.environ["STRESS_PIN"]) as session:
        for obj in session.get_objects():
            try:
                if obj[Attribute.ID]:
                    continue
            except pkcs11.PKCS11Error:
                pass
            record: dict[str, str] = {}
            for name in FIELDS:
                try:
                    record[name] = str(obj[getattr(Attribute, name)])
                except pkcs11.PKCS11Error as exc:
                    record[name] = type(exc).__name__
            found.append(record)
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
