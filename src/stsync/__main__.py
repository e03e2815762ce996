from stsync.cli.app import main

main()
