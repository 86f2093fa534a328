"""The CUDA check: kvgui's CUDA figures against a real CUDA build of the bundled llama.cpp.

kvgui models CUDA from llama.cpp's source (128-byte buffers, op offload from a batch of 32,
flash attention's f16 copies of a quantized cache, pinned host buffers) but the suite runs on
a CPU build. This package is what one prepared run on a lent NVIDIA machine needs, and what
folds its results back in:

``source``    the compressed source subset of the bundled llama.cpp that travels (and the other
              things the run carries: a real model's header, llama-cpp-python's Python part)
``build``     the CMake configuration (CUDA for one architecture, f16/q8_0/q4_0 attention
              kernels only) and the build, with a deadline
``matrix``    the accuracy matrix: sparse header-faithful models x settings
``fitparams`` llama-fit-params runs (``-fit off -fitp on -v``) in parallel, parsed for any
              device naming (CUDA0, RPC0, Host)
``compare``   llama.cpp's per-device figures against kvgui's estimate for the same devices
``realload``  a real load (not no_alloc) in a child: NVML per-process memory and
              cudaMemGetInfo before and after load, after a full-context prompt
``report``    the one JSON file the run writes (schema, incremental writer, validation)
``fold``      reading that JSON back: the README's accuracy rows and the CUDA overhead figure

``benchmarks/gpu_check.py`` is the command line (prepare / run / fold), and
``benchmarks/gpu_check.sh`` the one command the device runs.
"""
