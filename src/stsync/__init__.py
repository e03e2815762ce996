"""stsync: Referral Factory ⇄ ServiceTitan.

Layers, one direction: ``cli`` → ``services`` → the engines (``mapping``, ``checks``,
``customersync``, ``webhooks``, ``leads``) → ``connection`` → the clients and ``storage`` → leaf
modules; the ``sandbox`` stands beside them (docs/ARCHITECTURE.md, checked by tests/shape).
"""

import logging

__version__ = "0.1.0"

# Records with no handler of stsync's attached (before the log file opens, after it closes: a
# worker thread still retrying when Ctrl-C ended the command) go nowhere, not to logging's last
# resort on stderr after the command's final word.
logging.getLogger(__name__).addHandler(logging.NullHandler())
