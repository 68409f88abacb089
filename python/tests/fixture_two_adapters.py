"""Two adapters in one module: --adapter without :Class is ambiguous."""

from snakepit_bridge import BaseAdapter


class FirstAdapter(BaseAdapter):
    pass


class SecondAdapter(BaseAdapter):
    pass
