"""`python -m marport ...` is the `marport` command."""

from marport.cli import main

main()
