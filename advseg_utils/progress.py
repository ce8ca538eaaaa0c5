"""The progress bar every long loop shows: a notebook widget where Jupyter can draw one, text
elsewhere. (``tqdm.auto`` alone warns "IProgress not found" in a Jupyter without ipywidgets,
e.g. after a plain ``pip install .``, and then draws text anyway.)"""
import importlib.util

if importlib.util.find_spec("ipywidgets") is not None:
    from tqdm.auto import tqdm
else:
    from tqdm.std import tqdm

__all__ = ["tqdm"]
