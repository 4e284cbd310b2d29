"""Prepare a corpus for offbyone: `python data/prepare.py [--corpus PATH] [--data-root data]`.

The code lives in `offbyone.data` (so notebooks and training share it); this script is the
nanoGPT-style entry point beside the data it writes. `make data` runs the same thing.
"""
from offbyone.data import main

if __name__ == "__main__":
    main()
