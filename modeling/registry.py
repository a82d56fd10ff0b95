"""Small name -> constructor registries, so a config string picks a part (as timm does for
models)."""

from core.config import ConfigError


class Registry:
    """Maps names to constructors; ``get`` names the config key and the known names when a name is
    unknown."""

    def __init__(self, kind, config_key):
        self.kind = kind
        self.config_key = config_key
        self._entries = {}

    def register(self, name):
        def decorator(constructor):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = constructor
            return constructor

        return decorator

    def get(self, name):
        if name not in self._entries:
            raise ConfigError(
                f"{self.config_key}: unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self):
        return sorted(self._entries)

    def entries(self):
        """(name, entry) pairs in registration order."""
        return list(self._entries.items())

    def remove(self, name):
        """Forget a registration (a test's toy extension, once the test is done)."""
        del self._entries[name]

    def __contains__(self, name):
        return name in self._entries


BACKBONES = Registry("backbone", "MODEL.TYPE")
MARGIN_HEADS = Registry("margin head", "MODEL.HEADS.MARGIN_TYPE")
LOCAL_HEADS = Registry("local head", "MODEL.LOCAL.TYPE")
RERANKERS = Registry("re-ranker", "RERANKER.TYPE")
LOSS_TERMS = Registry("loss term", "MODEL.LOSSES")
