"""stsync: Referral Factory ⇄ ServiceTitan.

Layers, one direction: ``cli`` → ``services`` → the engines (``mapping``, ``checks``,
``customersync``, ``webhooks``, ``leads``) → ``connection`` → the clients and ``storage`` → leaf
modules; the ``sandbox`` stands beside them (docs/ARCHITECTURE.md, checked by tests/shape).
"""

__version__ = "0.1.0"
