"""The ops: each neuron's reference, Triton launchers, eager and inductor backends, torch.library
registration and public function (lif.py, plif.py, ilif.py over the shared skeleton in _neuron.py),
the candidate statistics (stats.py), surrogates, bit packing, the tdBN -> LIF recomputation, and the
argument checks and backend choice they share. Nothing here imports from a layer above it."""
