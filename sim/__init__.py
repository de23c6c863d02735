"""The simulated acoustic world: a town, its sound sources and what each node hears.

* :mod:`sim.world` — the town (nodes, building facades), sources, scenarios, truth;
* :mod:`sim.propagation` — arrivals (direct, echo, blocked, diffracted) and their
  band-limited waveform kernels with exact sub-sample delays;
* :mod:`sim.render` — a node's microphone signal, chunk by chunk, deterministically;
* :mod:`sim.adapters` — :class:`~sim.adapters.SimAudioSource`, the node's
  :class:`~node.audio.AudioSource` for a simulated microphone.

Nothing in :mod:`node` knows that its audio is simulated.
"""
