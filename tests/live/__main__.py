from tests.live.suite import cli

raise SystemExit(cli())
