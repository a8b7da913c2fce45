"""fedrec: a privacy-preserving federated recommender on Flower.

The distribution's packages, by audience (dependencies flow one way, downwards in this list:
a package imports only the ones below it):

    fedrec.cli          the ``fedrec`` command: every package's command group, assembled
    fedrec.simulations  researchers: simulations, centralized references, data tools, audit
    fedrec.deploy       a real deployment: SuperLink and SuperNode processes, credentials
    fedrec.client       the device: the ClientApp, its store and SDK, local training
    fedrec.server       the server: the ServerApp and its round loop
    fedrec.common       what the client and the server both import

(``fedrec.client`` and ``fedrec.server`` never import each other.)
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedrec")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
