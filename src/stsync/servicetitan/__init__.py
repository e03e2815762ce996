"""ServiceTitan API v2: ``client`` (ServiceTitanClient), ``auth`` (token cache), ``models``,
``vocabulary`` (fixed enums).

Nothing is re-exported: import from the module that defines a name.
"""
