"""python -m offbyone.gpu_check: see offbyone.gpu_check."""
from .check import main

main()
