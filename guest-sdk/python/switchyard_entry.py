"""What componentize-py builds: the controller's ``app`` module (which
declares its class with ``@switchyard.route``) and the world's exports.
``switchyard build`` names this module; a controller author never does."""

import app  # noqa: F401  (the controller, declared on import)
from switchyard._world import WitWorld  # noqa: F401
