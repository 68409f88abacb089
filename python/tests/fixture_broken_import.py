"""An adapter module that cannot be imported."""

import a_module_that_does_not_exist_snakepit  # type: ignore[import-not-found]  # noqa: F401

from snakepit_bridge import BaseAdapter


class NeverAdapter(BaseAdapter):
    pass
