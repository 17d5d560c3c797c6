"""marport: TorchServe archives that run unchanged locally and on SageMaker.

The `marport` command (marport/cli.py) is the way in. Shipped files are found by
marport.resources, the user's folders by marport.workspace.
"""

__version__ = "0.1.0"
