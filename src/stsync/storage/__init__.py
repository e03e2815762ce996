"""What stsync keeps on disk, per connection: where (``paths``), the config (``config`` reads,
``config_writer`` writes), the secrets (``secrets``), the ledger (``ledger``, its words in
``states``) and the OS locks (``locks``). Everything stsync creates there is its owner's only.
"""
