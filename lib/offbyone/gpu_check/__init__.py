"""A GPU in ten minutes: is the gpu profile safe to run here, and how long will it take?

    python -m offbyone.gpu_check          # make gpu-check; writes results/gpu/check.json

In parts, one job each: `kernels` (CUDA kernel error tables and tests), `sweep` (the kernel
sweep), `rates` (training, measurement, ensemble and start-up rates), `estimate` (the FLOP
budget and the wall-time estimates), `summary` (the check in words) and `check` (the script
that runs them in order, and the command line).

On a CUDA machine it
1. runs the CUDA tests (tests/test_cuda.py and the CUDA tests of tests/test_attention.py): the
   softmax1 and sink fast paths against the float64 reference, values and gradients, through
   the memory-efficient kernel in fp32 and the flash kernel in bf16 and fp16, at head sizes 64
   and 128 and T in {1, 7, 64, 1000, 4096}; and records every case's error beside fused
   softmax's error through the same kernel;
   (cuDNN's route, opt-in so far, is recorded too, errors included);
2. benchmarks attention forward + backward in bf16 from T = 1k to 16k (softmax, softmax1, sink:
   time and peak-memory ratios, peak from torch.cuda.max_memory_allocated), then sweeps the
   sink path's routes (the lse correction on cuDNN, flash and memory-efficient) against the
   fastest of SDPA's softmax backends, bf16, D 64 and 128, T = 256 to 16k, 20 timed rounds
   each, in at most 90 seconds (`kernel_sweep`);
3. trains the gpu profile's runs with the pipeline's own `train()` for a few hundred steps:
   softmax and softmax1 with torch.compile off and on, the other variants and the testbed's
   model eagerly (the main pair also compiled with CUDA graphs, `compile_mode:
   reduce-overhead`); measures one checkpoint of each with the pipeline's own `measure()`; and
   times the profile's seeds trained as one ensemble (`offbyone.ensemble`);
4. estimates the wall time of `make reproduce PROFILE=<profile>` (the notebooks) and of
   `python -m offbyone.study run <profile>` (one process per stage, with and without
   ensembles), stage by stage, from those rates and the profile's run list (`estimate`,
   `study_estimate`), beside the written FLOP count (`flop_budget`);
5. writes it all to results/gpu/check.json with provenance and prints a summary.

Without CUDA it exits with status 2 and says so. `--cpu-rehearsal` runs steps 2 to 5 on the CPU
at toy sizes (the tests use it); its numbers mean nothing.
"""
from .check import NO_CUDA_EXIT, main, run_check
from .estimate import (compiled_training_ratio, estimate, estimate_from, flop_budget,
                       flops_per_token, normalized, study_estimate)
from .kernels import CHECK_HEAD_SIZES, CHECK_KERNELS, CHECK_T, kernel_error_table, kernel_errors
from .summary import summary_lines
from .sweep import kernel_sweep
