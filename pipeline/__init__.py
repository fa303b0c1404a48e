"""The computation of the lab's pipeline: arrays and tensors in, arrays and tensors out.

Nothing in this package touches a database; every algorithm is a plain function that can be
called on a numpy array in a notebook. The DataJoint tables that call these functions live in
the sibling package ``schemas``.
"""

__version__ = "0.1.0"
