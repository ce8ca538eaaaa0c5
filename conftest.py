"""Root pytest setup, shared by the unit tests and the notebooks run through nbval.

Environment variables set here are inherited by the Jupyter kernels that nbval starts, so
every notebook runs in its smoke configuration (bundled sample data, a few steps).
"""
import os

os.environ.setdefault("ADVSEG_SMOKE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
