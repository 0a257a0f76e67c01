"""Running `sam-bridge run` in the background: systemd, launchd and Task Scheduler files, and installing them."""
