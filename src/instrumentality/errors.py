"""Errors with messages a user can act on."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and what is allowed."""


def check_config(obj, group: str, checks):
    """checks: (field, ok, allowed) triples. Raises ConfigError naming `group.field` for the first failure."""
    for name, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"{group}.{name} must be {allowed}; got {getattr(obj, name)!r}")
