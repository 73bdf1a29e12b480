"""The command line's modes (train, investigate, predict, export) and what they share: run
folders and weights choices (`runs`), and the checks made before any model work (`preflight`)."""
