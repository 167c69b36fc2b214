"""``python -m train.random``: the command's name only; the code is ``train.random_init``."""
from train.random_init import cli

if __name__ == "__main__":
    cli()
