"""The error every config check raises: one line that names the key."""


class ConfigError(ValueError):
    pass
