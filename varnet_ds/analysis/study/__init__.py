"""A study's statistics and reports: ``load`` (the one study loader), ``contrasts``, ``report`` (study.json, the
README block, the command), ``markdown``, ``page``, ``plots``, ``sections``, ``contrast_text``."""
