"""`python -m segsweep ...` (and `torchrun -m segsweep run ...`): the `segsweep` command."""
from .cli import main

if __name__ == "__main__":
    main()
