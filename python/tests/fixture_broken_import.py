"""An adapter module that cannot be imported."""

from snakepit_bridge import BaseAdapter

import a_module_that_does_not_exist_snakepit  # noqa: F401


class NeverAdapter(BaseAdapter):
    pass
