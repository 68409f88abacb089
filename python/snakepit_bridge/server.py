"""``python -m snakepit_bridge.server``: the worker's entry point before protocol 2.

Kept so that existing scripts keep working; the host starts ``snakepit_bridge`` itself.
"""

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
