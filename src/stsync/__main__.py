"""``python -m stsync``: the same CLI as the ``stsync`` command."""

from stsync.cli.app import main

main()
