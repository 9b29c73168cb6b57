"""`python -m rtjobs.cli`: the `rtjobs` command from a source tree."""

from rtjobs.cli import main

main()
