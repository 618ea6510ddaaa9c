"""A chain of coupled Duffing resonators for labd: an example of a lab's own rig as a plugin.

``chain``: the equations and one integrator (numpy and torch); ``bench``: the simulated device
(hidden imperfections, drift, noise); ``physics``: the nominal model for the trainer;
``instruments``: the piezo DAC and capacitive ADC drivers. labd finds them through the entry
points of this package's ``pyproject.toml``.
"""
