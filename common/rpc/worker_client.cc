// placeholder: written by the worker-client helper
