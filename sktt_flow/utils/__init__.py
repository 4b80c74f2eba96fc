"""Small helpers shared by every layer: validation, random state, optimisation.

This is the bottom layer of the package: it imports only torch and numpy.
"""
