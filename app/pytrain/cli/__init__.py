"""The ``pytrain`` command line. Each module registers its commands on the one typer app."""
