"""wsbus: joint weakly- and semi-supervised Faster R-CNN for breast ultrasound (Shin et al., TMI 2019).

The book in ``book/`` teaches each module; every public docstring names its chapter.
"""
__version__ = "0.2.0"
