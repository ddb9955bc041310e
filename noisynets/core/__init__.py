"""The core: what a noisy network is made of and how one batched forward of its passes runs.

* ``noise`` -- the nodes' intrinsic noise sources; ``analog`` -- device noise in the weights
  (PCM) and the ADC the activities are read through;
* ``units`` -- the nodes' nonlinearities: discontinuous, stochastic and spiking units;
* ``decorrelation`` -- ``R``, a parametrization of each decorrelated weight;
* ``precision`` -- the number format of the difference products; ``losses`` -- per-sample
  losses; ``validate`` -- the checks of a forward's arguments.
"""
