"""``python -m snakepit_bridge``: run a worker (see cli.py for the contract with the host)."""

from .cli import main

main()
