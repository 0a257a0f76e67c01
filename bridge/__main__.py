from bridge.cli import entry

entry()
