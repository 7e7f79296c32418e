"""The lab tests and benchmarks share: namespaces, a private bus, processes, packet builders."""
